"""Pure rules of the event loop about endpoint records: which to program, announce or expose."""

from __future__ import annotations

from collections.abc import Callable

from driver.peers import Peer
from kvstore import HOST_KIND, Endpoint


def remote_peers(
    host_id: str, endpoints: dict[str, Endpoint], tunnel_of: Callable[[str], str] | None = None
) -> list[Peer]:
    """Endpoints on other hosts, as the dataplane programs them: reached at their host's VTEP, or with
    tunnel_of (an encrypted network) at the tunnel address of their host."""
    return [
        Peer(mac=e.mac, ip=e.ip, vtep=tunnel_of(e.host_id) if tunnel_of else e.vtep, ip6=e.ip6)
        for e in endpoints.values()
        if e.host_id != host_id
    ]


def _announces(host_id: str, before: Endpoint | None, after: Endpoint) -> bool:
    """Whether a watch event makes this host announce a remote endpoint: it appeared with an address,
    or its IP-to-MAC mapping changed."""
    if after.host_id == host_id or not (after.address or after.address6):
        return False
    return before is None or (before.ip, before.ip6, before.mac) != (after.ip, after.ip6, after.mac)


def _programs_kernel(host_id: str, *records: Endpoint | None) -> bool:
    """Whether an endpoint event (its record before and after) changes what sync programs: another
    host's endpoints (FDB and neighbour entries) or this host's exposure (the bridge's address)."""
    return any(e is not None and (e.host_id != host_id or e.kind == HOST_KIND) for e in records)


def own_host_address(host_id: str, endpoints: dict[str, Endpoint]) -> tuple[str, str] | None:
    """(address, MAC) of this host's exposure on the network (pyoverlay expose), or None."""
    exposed = [e for e in endpoints.values() if e.host_id == host_id and e.kind == HOST_KIND and e.address]
    return (exposed[0].address, exposed[0].mac) if exposed else None
