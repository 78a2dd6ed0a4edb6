"""WireGuard keys, MTU, peer normalisation, the peer diff and the kernel dump parser (no root)."""

import base64
import socket

import pytest
from pyroute2.netlink.generic.wireguard import wgmsg

from driver.wireguard import generate_private_key, mtu_for, public_key
from driver.wireguard_config import PeerStats, TunnelPeer, check_key, parse_netlink, peer_changes


def b64(hex_text: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_text)).decode()


def test_public_key_matches_rfc7748s_x25519_vector() -> None:
    # RFC 7748 section 6.1, Alice's key pair
    private = b64("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    assert public_key(private) == b64("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def test_generated_keys_are_distinct_wireguard_keys() -> None:
    first, second = generate_private_key(), generate_private_key()
    assert first != second
    assert check_key(first) and check_key(public_key(first)) and public_key(first) != public_key(second)


@pytest.mark.parametrize("bad", ["", "not base64!", base64.b64encode(b"short").decode(), "A" * 44])
def test_a_bad_key_is_refused_with_its_value(bad: str) -> None:
    with pytest.raises(ValueError, match="not a WireGuard key"):
        check_key(bad)


def test_mtu_accounts_for_wireguards_headers() -> None:
    assert mtu_for(1500, ipv6_underlay=False) == 1440
    assert mtu_for(1500, ipv6_underlay=True) == 1420
    assert mtu_for(9001, ipv6_underlay=False) == 8941
    with pytest.raises(ValueError):
        mtu_for(600, ipv6_underlay=True)


def test_peers_are_compared_in_one_spelling() -> None:
    written = TunnelPeer("192.0.2.2:51820", ("10.9.1.0/24", "10.9.0.7/32", "10.9.1.5/24"))
    read_back = TunnelPeer("192.0.2.2:51820", ("10.9.0.7/32", "10.9.1.0/24"))
    assert written == read_back and written.allowed_ips == ("10.9.0.7/32", "10.9.1.0/24")
    assert TunnelPeer("[2001:db8:0::2]:51820", ()).endpoint == "[2001:db8::2]:51820"


@pytest.mark.parametrize("endpoint", ["192.0.2.2", "192.0.2.2:0", "host:51820", "192.0.2.2:65536", ""])
def test_a_bad_endpoint_is_refused(endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        TunnelPeer(endpoint, ())


def test_bad_allowed_ips_and_keepalive_are_refused() -> None:
    with pytest.raises(ValueError, match="allowed ips"):
        TunnelPeer("192.0.2.2:51820", ("10.9.0.300/32",))
    with pytest.raises(ValueError, match="keepalive"):
        TunnelPeer("192.0.2.2:51820", (), keepalive=-1)


def test_peer_changes_touch_only_what_differs() -> None:
    keys = [public_key(generate_private_key()) for _ in range(4)]
    same = TunnelPeer("192.0.2.2:51820", ("10.9.0.2/32",))
    actual = {keys[0]: same, keys[1]: TunnelPeer("192.0.2.3:51820", ("10.9.0.3/32",)), keys[2]: same}
    desired = {
        keys[0]: same,  # unchanged: left alone
        keys[1]: TunnelPeer("192.0.2.33:51820", ("10.9.0.3/32",)),  # moved: rewritten
        keys[3]: TunnelPeer("192.0.2.4:51820", ("10.9.0.4/32",)),  # new
    }  # keys[2] gone: removed
    remove, upsert = peer_changes(desired, actual)
    assert remove == [keys[2]]
    assert upsert == {keys[1]: desired[keys[1]], keys[3]: desired[keys[3]]}
    assert peer_changes(desired, desired) == ([], {})


def _peer_attrs(key: str, allowed: list[str], endpoint: dict | None = None) -> dict:
    attrs: list = [["WGPEER_A_PUBLIC_KEY", key]]
    if endpoint is not None:
        attrs += [
            ["WGPEER_A_ENDPOINT", endpoint],
            ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
            ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1_700_000_000, "tv_nsec": 500_000_000}],
            ["WGPEER_A_RX_BYTES", 100],
            ["WGPEER_A_TX_BYTES", 200],
        ]
    ips = []
    for cidr in allowed:
        address, prefix = cidr.split("/")
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        ips.append(
            {
                "attrs": [
                    ["WGALLOWEDIP_A_FAMILY", family],
                    ["WGALLOWEDIP_A_IPADDR", socket.inet_pton(family, address)],
                    ["WGALLOWEDIP_A_CIDR_MASK", int(prefix)],
                ]
            }
        )
    attrs.append(["WGPEER_A_ALLOWEDIPS", ips])
    return {"attrs": attrs}


def _kernel_message(attrs: list) -> wgmsg:
    """A message as the kernel sends it: encoded, then decoded by pyroute2 as a dump reply is."""
    msg = wgmsg()
    msg["cmd"], msg["version"], msg["attrs"] = 0, 1, attrs
    msg.encode()
    decoded = wgmsg(msg.data)
    decoded.decode()
    return decoded


def test_the_kernels_dump_is_read_across_messages() -> None:
    private = generate_private_key()
    first, second = public_key(generate_private_key()), public_key(generate_private_key())
    messages = [
        _kernel_message(
            [
                ["WGDEVICE_A_IFNAME", "pyowg0"],
                ["WGDEVICE_A_PRIVATE_KEY", private],
                ["WGDEVICE_A_LISTEN_PORT", 51820],
                [
                    "WGDEVICE_A_PEERS",
                    [_peer_attrs(first, ["10.9.0.2/32"], {"addr": "192.0.2.2", "port": 51820})],
                ],
            ]
        ),
        # the dump went on in a second message: more of first's allowed IPs, then another peer
        _kernel_message(
            [
                ["WGDEVICE_A_IFNAME", "pyowg0"],
                [
                    "WGDEVICE_A_PEERS",
                    [
                        _peer_attrs(first, ["fd00:9::2/128"]),
                        _peer_attrs(second, ["10.9.0.3/32"], {"addr": "2001:db8::3", "port": 51821}),
                    ],
                ],
            ]
        ),
    ]
    config = parse_netlink(messages)
    assert config.private_key == private and config.listen_port == 51820
    assert config.peers == {
        first: TunnelPeer("192.0.2.2:51820", ("10.9.0.2/32", "fd00:9::2/128"), 25),
        second: TunnelPeer("[2001:db8::3]:51821", ("10.9.0.3/32",), 25),
    }
    assert config.stats[first] == PeerStats(1_700_000_000.5, 100, 200)
    assert not config.incomplete


def test_a_kernel_peer_without_endpoint_is_marked_for_rewriting() -> None:
    key = public_key(generate_private_key())
    zero_key = base64.b64encode(bytes(32)).decode()
    message = _kernel_message(
        [["WGDEVICE_A_PRIVATE_KEY", zero_key], ["WGDEVICE_A_PEERS", [_peer_attrs(key, ["10.9.0.2/32"])]]]
    )
    config = parse_netlink([message])
    assert config.private_key is None  # all zeros: the kernel's "no key"
    assert config.peers == {} and config.incomplete == {key}
