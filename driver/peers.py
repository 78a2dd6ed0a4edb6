"""Remote peers as pure data: what the kernel should hold, and the difference to what it holds."""

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

FLOOD_MAC = "00:00:00:00:00:00"


@dataclass(frozen=True)
class Peer:
    """An endpoint on another host: its MAC, its IPv4 and IPv6 address (if any) and the VTEP (host
    underlay IP) behind it."""

    mac: str
    ip: str | None
    vtep: str
    ip6: str | None = None


@dataclass(frozen=True)
class PeerState:
    """FDB entries (mac, vtep) on a VXLAN device, including flood entries, and neighbour entries (ip, mac)
    of either family (the VXLAN device answers ARP and neighbour solicitations from them)."""

    fdb: frozenset[tuple[str, str]] = frozenset()
    neigh: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class PeerChanges:
    """What to add to and remove from a VXLAN device to turn the actual state into the desired one."""

    add_fdb: frozenset[tuple[str, str]] = frozenset()
    del_fdb: frozenset[tuple[str, str]] = frozenset()
    add_neigh: frozenset[tuple[str, str]] = frozenset()
    del_neigh: frozenset[tuple[str, str]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.add_fdb or self.del_fdb or self.add_neigh or self.del_neigh)


def normalize_mac(mac: str) -> str:
    """Lower-case colon form, so entries read back from the kernel compare equal to desired ones."""
    return mac.strip().lower().replace("-", ":")


def normalize_ip(address: str) -> str:
    """Canonical text form of an IP address; anything unparsable is kept as is (apply reports it)."""
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        return address


def desired_state(peers: Iterable[Peer], flood_vteps: Iterable[str]) -> PeerState:
    """The entries a VXLAN device should hold for these remote peers and flood destinations.

    Every flood VTEP gets an all-zeros FDB entry (broadcast and multicast go to each). A peer's IPv4 and
    IPv6 address each get a neighbour entry. The kernel keeps one destination per unicast MAC and one MAC
    per IP, so when peers conflict the lowest (vtep, mac) wins: the result never depends on input order.
    """
    normalized = sorted(
        (
            normalize_ip(p.vtep),
            normalize_mac(p.mac),
            normalize_ip(p.ip) if p.ip else "",
            normalize_ip(p.ip6) if p.ip6 else "",
        )
        for p in peers
    )
    vtep_of_mac: dict[str, str] = {}
    mac_of_ip: dict[str, str] = {}
    for vtep, mac, *ips in normalized:
        if mac == FLOOD_MAC:
            continue  # the all-zeros MAC means "flood"; a peer can't own it
        vtep_of_mac.setdefault(mac, vtep)
        for ip in ips:
            if ip and vtep_of_mac[mac] == vtep:
                mac_of_ip.setdefault(ip, mac)
    fdb = set(vtep_of_mac.items())
    fdb |= {(FLOOD_MAC, normalize_ip(vtep)) for vtep in flood_vteps}
    return PeerState(fdb=frozenset(fdb), neigh=frozenset(mac_of_ip.items()))


def diff(desired: PeerState, actual: PeerState) -> PeerChanges:
    """The changes that turn actual into desired."""
    return PeerChanges(
        add_fdb=desired.fdb - actual.fdb,
        del_fdb=actual.fdb - desired.fdb,
        add_neigh=desired.neigh - actual.neigh,
        del_neigh=actual.neigh - desired.neigh,
    )
