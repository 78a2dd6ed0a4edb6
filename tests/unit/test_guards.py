"""The pure parts of the datapath guards: whom the VXLAN allow-list names, what a port's rules are made of."""

from __future__ import annotations

import struct

from driver import nft
from driver.port_security import link_local, port_rules
from kvstore import HOST_KIND, Endpoint, Host
from plugin.guards import allowed_vteps, own_ports


def endpoint(endpoint_id: str, host: str, vtep: str, kind: str = "container") -> Endpoint:
    mac = "02:42:0a:00:00:02"
    return Endpoint(endpoint_id, "net", host, vtep, mac, "10.0.0.2/24", kind=kind, address6="fd00::2/64")


def test_allowed_vteps_are_registered_hosts_and_remote_endpoints_hosts_and_none_without_networks():
    hosts = {h: Host(h, address) for h, address in {"a": "192.0.2.1", "b": "192.0.2.2"}.items()}
    assert allowed_vteps("a", hosts, {}) is None
    lapsed = endpoint("e1", "c", "192.0.2.3")  # c's lease lapsed: its endpoint keeps it allowed
    own = endpoint("e2", "a", "192.0.2.1")
    assert allowed_vteps("a", hosts, {"net": {"e1": lapsed, "e2": own}}) == {
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
    }
    assert allowed_vteps("a", {}, {"net": {}}) == set()


def test_own_ports_are_this_hosts_containers_with_their_addresses():
    endpoints = {
        "e1": endpoint("e1", "a", "192.0.2.1"),
        "e2": endpoint("e2", "b", "192.0.2.2"),
        "e3": endpoint("e3", "a", "192.0.2.1", kind=HOST_KIND),  # the exposure's port: the host is trusted
    }
    assert own_ports("a", endpoints) == {"e1": ("02:42:0a:00:00:02", ("10.0.0.2", "fd00::2"))}


def test_link_local_is_the_kernels_eui64():
    assert str(link_local("02:42:0a:00:00:01")) == "fe80::42:aff:fe00:1"
    assert str(link_local("00:11:22:33:44:55")) == "fe80::211:22ff:fe33:4455"


def test_a_port_drops_what_it_does_not_accept_and_ipv4_needs_an_address():
    rules = port_rules("02:42:0a:00:00:01", ("10.0.0.1",))
    assert rules[-1] == nft.verdict(nft.DROP)
    ipv4 = [r for r in rules if nft.match(nft.NETWORK, 12, bytes([10, 0, 0, 1])) in r]
    assert len(ipv4) == 1 and ipv4[0].endswith(nft.verdict(nft.ACCEPT))
    assert len(port_rules("02:42:0a:00:00:01", ())) == len(rules) - 2  # no IPv4 or ARP accept without one


def test_attributes_are_padded_to_four_bytes():
    data = nft.text(1, "abc")  # 4 + "abc\0"
    assert len(data) == 8 and struct.unpack_from("=HH", data) == (8, 1)
    assert len(nft.attr(2, b"x")) == 8 and struct.unpack_from("=H", nft.attr(2, b"x"))[0] == 5
