"""Containers cannot spoof peers: source checks on each endpoint's bridge port, in the network's namespace,
as Neutron's port security and Calico do.

Two layers, both programmed over netlink without a fork:

- the bridge (Ethernet): the port is ``locked`` with learning and unknown-unicast flooding off, and the
  endpoint's MAC is a static FDB entry on it. A locked port only takes frames whose source MAC has an FDB
  entry pointing at it, so a frame from any other MAC is dropped; nothing is learned from the port, so a
  container that takes a peer's MAC never draws the peer's frames to itself; and a frame for a MAC the
  bridge does not know is flooded to the VXLAN port only, never to containers (whose MACs it always knows).
- nftables, bridge family (IP): one table per network namespace with a verdict map from a port's name to
  the port's own chain. The chain accepts IPv4 from the endpoint's address, ARP whose sender is the
  endpoint's MAC and address, IPv6 from its address, its link-local (EUI-64 of the MAC, as the kernel
  derives it) or :: (duplicate address detection); it drops neighbour advertisements for any other
  target, router advertisements and redirects; everything else from the port is dropped.

    table bridge pyoverlay {
        map ports { type ifname : verdict; elements = { "poh<id>" : jump poh<id>, ... } }
        chain prerouting { type filter hook prerouting priority -200; meta iifname vmap @ports }
        chain poh<id> { ...the endpoint's checks...; drop }
    }

Ports not in the map (the VXLAN device, the host's exposure port: the host is trusted) are not checked.
A network's table goes with its namespace; a port's chain and map element go with the port.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NTF_STICKY, NUD_NOARP

from . import nft
from .errors import DataplaneError
from .links import find_link, kernel_op

TABLE = "pyoverlay"
MAP = "ports"
BASE_CHAIN = "prerouting"
_F = nft.BRIDGE
_PRIORITY_FILTER = -200  # NF_BR_PRI_FILTER_BRIDGED
_ETH_IP, _ETH_ARP, _ETH_IP6 = b"\x08\x00", b"\x08\x06", b"\x86\xdd"
_ARP_ETHERNET_IPV4 = bytes.fromhex("000108000604")  # htype 1, ptype IPv4, hlen 6, plen 4
_ICMPV6 = 58
_ROUTER_ADVERT, _NEIGH_ADVERT, _REDIRECT = 134, 136, 137


def _table_messages() -> list[nft.Message]:
    """The network's table, map and base chain; exclusive: a table that exists is left as it is (it was
    made whole, in one transaction)."""
    return [
        nft.table(_F, TABLE, exclusive=True),
        nft.new_set(_F, TABLE, MAP, nft.TYPE_IFNAME, nft.IFNAMSIZ, verdict_map=True),
        nft.chain(_F, TABLE, BASE_CHAIN, hook=(nft.HOOK_PREROUTING, _PRIORITY_FILTER)),
        nft.rule(_F, TABLE, BASE_CHAIN, nft.meta(nft.META_IIFNAME) + nft.lookup(MAP, verdict_map=True)),
    ]


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address the kernel gives an interface with this MAC."""
    b = bytes.fromhex(mac.replace(":", ""))
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + bytes([b[0] ^ 2]) + b[1:3] + b"\xff\xfe" + b[3:])


def port_rules(mac: str, addresses: tuple[str, ...]) -> list[bytes]:
    """The expressions of each rule of a port's chain, in order."""
    own_mac = bytes.fromhex(mac.replace(":", ""))
    ips = [ipaddress.ip_address(a) for a in addresses]
    targets = [ip.packed for ip in ips if ip.version == 6] + [link_local(mac).packed]
    ip6 = nft.match(nft.LL, 12, _ETH_IP6)
    icmp6 = ip6 + nft.meta(nft.META_L4PROTO) + nft.cmp(bytes([_ICMPV6]))
    rules = [nft.match(nft.LL, 6, own_mac, equal=False) + nft.verdict(nft.DROP)]
    for ip in (ip.packed for ip in ips if ip.version == 4):
        rules.append(
            nft.match(nft.LL, 12, _ETH_IP) + nft.match(nft.NETWORK, 12, ip) + nft.verdict(nft.ACCEPT)
        )
        sender = nft.match(nft.NETWORK, 8, own_mac) + nft.match(nft.NETWORK, 14, ip)
        arp = nft.match(nft.LL, 12, _ETH_ARP) + nft.match(nft.NETWORK, 0, _ARP_ETHERNET_IPV4)
        rules.append(arp + sender + nft.verdict(nft.ACCEPT))
    for icmp_type in (_ROUTER_ADVERT, _REDIRECT):  # only routers send these: no endpoint is one
        rules.append(icmp6 + nft.match(nft.TRANSPORT, 0, bytes([icmp_type])) + nft.verdict(nft.DROP))
    other_target = b"".join(nft.match(nft.TRANSPORT, 8, target, equal=False) for target in targets)
    rules.append(
        icmp6 + nft.match(nft.TRANSPORT, 0, bytes([_NEIGH_ADVERT])) + other_target + nft.verdict(nft.DROP)
    )
    for source in [*targets, bytes(16)]:  # :: is duplicate address detection's source
        rules.append(ip6 + nft.match(nft.NETWORK, 8, source) + nft.verdict(nft.ACCEPT))
    rules.append(nft.verdict(nft.DROP))
    return rules


def _port_messages(port: str, mac: str, addresses: tuple[str, ...]) -> list[nft.Message]:
    """The port's chain made or emptied, its rules, its map element: one transaction."""
    return [
        nft.chain(_F, TABLE, port),
        nft.flush_chain(_F, TABLE, port),
        *(nft.rule(_F, TABLE, port, expressions) for expressions in port_rules(mac, addresses)),
        nft.elements(_F, TABLE, MAP, [nft.ifname(port)], jump=port),
    ]


def ensure_table(netns: str) -> None:
    """The network's table (netns: the network namespace's path); made if missing."""
    try:
        nft.commit(netns, _table_messages())
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise DataplaneError(f"nftables table bridge {TABLE} in {netns}: create: {exc}") from exc


def secure_port(
    net: IPRoute, netns: str, port: Any, bridge: Any, mac: str, addresses: tuple[str, ...]
) -> None:
    """Lock the endpoint's bridge port to its MAC and addresses (both layers); idempotent."""
    name, index = port.get("ifname"), port["index"]
    try:
        messages = _port_messages(name, mac, addresses)
    except ValueError as exc:
        raise DataplaneError(f"{name}: port security: {exc}") from exc
    try:
        try:
            nft.commit(netns, messages)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            ensure_table(netns)  # a network made before port security
            nft.commit(netns, messages)
    except OSError as exc:
        raise DataplaneError(f"{name}: port security rules for {mac} {' '.join(addresses)}: {exc}") from exc
    # sticky: a static entry still roams to a port its source MAC arrives on (an IPv6 announcement of this
    # endpoint by another host floods back over VXLAN), and with learning off here it would never return
    with kernel_op(name, f"static FDB entry {mac}"):
        flags = NTF_MASTER | NTF_STICKY
        net.fdb("replace", ifindex=index, lladdr=mac, master=bridge["index"], flags=flags, state=NUD_NOARP)
    with kernel_op(name, "lock bridge port (learning off, unicast flood off)"):
        net.brport("set", index=index, learning=0, unicast_flood=0, locked=1)


def release_port(netns: str, port: str) -> None:
    """Remove a port's chain and map element (the port is going); nothing to do if they are gone."""
    chain = nft.delete_chain(_F, TABLE, port)
    for messages in ([nft.elements(_F, TABLE, MAP, [nft.ifname(port)], add=False), chain], [chain]):
        try:
            nft.commit(netns, messages)
            return
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise DataplaneError(f"{port}: remove port security rules: {exc}") from exc


def secured_ports(netns: str) -> set[str]:
    """The ports that have a chain in the network's table (for audits and collect_ports)."""
    with nft.nftables(netns, _F, f"nftables table bridge {TABLE}") as sock:
        try:
            chains = sock.get_chains()
        except (NetlinkError, OSError) as exc:
            raise DataplaneError(f"nftables table bridge {TABLE} in {netns}: list chains: {exc}") from exc
    return {c.get_attr("NFTA_CHAIN_NAME") for c in chains if c.get_attr("NFTA_CHAIN_TABLE") == TABLE} - {
        BASE_CHAIN
    }


def reconcile(
    net: IPRoute, netns: str, bridge: Any, wanted: dict[str, tuple[str, tuple[str, ...]]]
) -> list[str]:
    """Secure the ports in wanted (port name -> (MAC, addresses)) that exist without a chain (a network
    made before port security, rules lost), and remove the chains of ports that are gone (an agent stopped
    before its reaper ran); one message per failure."""
    errors = []
    present = secured_ports(netns)
    for name in sorted(set(wanted) | present):
        link = find_link(net, name)
        try:
            if link is None and name in present:
                release_port(netns, name)
            elif link is not None and name in wanted and name not in present:
                secure_port(net, netns, link, bridge, *wanted[name])
        except DataplaneError as exc:
            errors.append(str(exc))
    return errors
