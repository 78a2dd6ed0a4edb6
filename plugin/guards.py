"""What the event loop asks of the datapath guards (docs/security.md): the VXLAN allow-list of a host and
the port security of its own endpoints, computed from the loop's view; the kernel work is driver/'s."""

from __future__ import annotations

import logging

from driver import Dataplane, DataplaneError
from kvstore import HOST_KIND, Endpoint, Host, Network

from .encryption import DEVICE as TUNNEL_DEVICE
from .encryption import tunnel_address

log = logging.getLogger(__name__)


def allowed_vteps(
    host_id: str, hosts: dict[str, Host], endpoints: dict[str, dict[str, Endpoint]]
) -> set[str] | None:
    """Registered hosts' VTEPs and the hosts of remote endpoints here (a host whose lease lapsed in a
    partition keeps its endpoints, and its traffic, until it is forgotten); None with no network bound
    here: no VXLAN socket to guard."""
    if not endpoints:
        return None
    remote = {e.vtep for eps in endpoints.values() for e in eps.values() if e.host_id != host_id}
    return {h.address for h in hosts.values()} | remote


def own_ports(host_id: str, endpoints: dict[str, Endpoint]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """This host's container endpoints of one network: id -> (MAC, addresses), as their ports are locked."""
    return {
        e.endpoint_id: (e.mac, tuple(ip for ip in (e.ip, e.ip6) if ip))
        for e in endpoints.values()
        if e.host_id == host_id and e.kind != HOST_KIND
    }


def sealed_members(
    host_id: str, networks: dict[str, Network], endpoints: dict[str, dict[str, Endpoint]]
) -> set[tuple[str, int]] | None:
    """(tunnel address, VNI) of every other host with an endpoint in an encrypted network bound here;
    None with no encrypted network bound here: no IPv6 VXLAN socket to guard."""
    sealed = [
        (networks[n].vni, eps) for n, eps in endpoints.items() if n in networks and networks[n].encrypted
    ]
    if not sealed:
        return None
    return {
        (tunnel_address(e.host_id), vni) for vni, eps in sealed for e in eps.values() if e.host_id != host_id
    }


class VtepGuard:
    """Programs the allow-lists when they change, and in full on force (drift); a failure is logged and
    tried again at the next change."""

    def __init__(self, dataplane: Dataplane, port: int) -> None:
        self.dataplane = dataplane
        self.port = port
        self.programmed: set[str] | None = None  # as last programmed (None: no filter)
        self.sealed: set[tuple[str, int]] | None = None
        self.forced = True  # the kernel may hold a previous run's filter: the first update is in full

    def update(
        self, wanted: set[str] | None, sealed: set[tuple[str, int]] | None = None, force: bool = False
    ) -> None:
        force, self.forced = force or self.forced, False
        try:
            if force or wanted != self.programmed:
                if wanted is None:
                    self.dataplane.vteps.remove()
                else:
                    self.dataplane.vteps.allow(wanted, self.port)
                self.programmed = wanted
            if force or sealed != self.sealed:
                if sealed is None:
                    self.dataplane.sealed.remove()
                else:
                    self.dataplane.sealed.allow(sealed, self.port, TUNNEL_DEVICE)
                self.sealed = sealed
        except DataplaneError as exc:
            self.forced = True
            log.warning("VXLAN source filter: %s", exc)
