"""Host access (`pyoverlay expose` / `hide`): this host's own address on a network.

An exposure is an Endpoint of kind HOST_KIND with a deterministic id per (host, network). Its address is
reserved in the network's pool with that id as owner, so IPAM never gives it to a container; its MAC is
derived from the address. Other hosts program it like any remote endpoint (FDB + neighbour entry); this
host's event loop puts the address and MAC on the network's bridge. Leaving or deleting the network, and
forget-host, remove it with its address (kvstore/networks.py, store.py).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kvstore import HOST_KIND, Endpoint, Network, NotFound, Store

from ..errors import BadRequest, UnknownObject
from .network import mac_for_address

ID_PREFIX = "host-"
MIN_ID_PREFIX = 12  # a network given by id needs at least this many characters


def exposure_id(host_id: str, network_id: str) -> str:
    """The endpoint id of a host's exposure on a network: the same on every call, unique per pair."""
    return f"{ID_PREFIX}{host_id}-{network_id}"


@dataclass
class ExposureService:
    store: Store
    host_id: str

    def find_network(self, name: str) -> Network:
        """The cluster network called ``name`` (Network.name), or whose id starts with it."""
        networks = self.store.list_networks()
        named = [n for n in networks if n.name == name]
        if not named and len(name) >= MIN_ID_PREFIX:
            named = [n for n in networks if n.network_id.startswith(name)]
        if not named:
            raise UnknownObject(f"no pyoverlay network {name!r} (docker network ls -f driver=pyoverlay)")
        if len(named) > 1:
            ids = ", ".join(n.network_id[:12] for n in named)
            raise BadRequest(f"{len(named)} networks are called {name!r} ({ids}): give the id instead")
        return named[0]

    def expose(self, name: str, address: str | None = None) -> Endpoint:
        """Give this host an address on the network (``address``, or the next free one) and record it;
        already exposed: the same record (Conflict if ``address`` names another one)."""
        network = self.find_network(name)
        label = network.name or network.network_id[:12]
        if network.network_id not in self.store.bindings(self.host_id).values():
            raise BadRequest(f"network {label} is not on this host (host id {self.host_id})")
        if network.pool6_id and not network.pool_id:
            raise BadRequest(f"network {label} is IPv6-only: pyoverlay expose gives a host an IPv4 address")
        if not network.pool_id or not network.subnet:
            raise BadRequest(f"network {label} uses Docker's default IPAM: only pyoverlay's can expose")
        vtep = next((h.address for h in self.store.list_hosts() if h.host_id == self.host_id), None)
        if vtep is None:
            raise BadRequest(f"the agent of this host (id {self.host_id}) is not running: start it first")
        endpoint_id = exposure_id(self.host_id, network.network_id)
        ip = self.store.reserve_address(network.pool_id, endpoint_id, self.host_id, address)
        prefixlen = ipaddress.IPv4Network(network.subnet).prefixlen
        endpoint = Endpoint(
            endpoint_id=endpoint_id,
            network_id=network.network_id,
            host_id=self.host_id,
            vtep=vtep,
            mac=mac_for_address(ipaddress.IPv4Interface(ip)),  # the bridge's MAC while exposed
            address=f"{ip}/{prefixlen}",
            kind=HOST_KIND,
        )
        if self._current(endpoint_id) != endpoint:  # an unchanged record is not written again
            self.store.put_endpoint(endpoint)
        return endpoint

    def hide(self, name: str) -> str | None:
        """Remove this host's exposure on the network and free its address; the address it had (CIDR),
        or None if it had none. The network need not be bound here any more."""
        network = self.find_network(name)
        endpoint_id = exposure_id(self.host_id, network.network_id)
        current = self._current(endpoint_id)
        self.store.delete_endpoint(endpoint_id)  # first: no host routes to it once its address is free
        freed = current.address if current else None
        if network.pool_id:
            # by owner, not by the record: an expose that stopped after reserving left no record
            for ip, owner in self.store.list_addresses(network.pool_id).items():
                if owner == endpoint_id:
                    self.store.release_address(network.pool_id, ip)
                    freed = freed or f"{ip}/{ipaddress.IPv4Network(network.subnet or ip).prefixlen}"
        return freed

    def _current(self, endpoint_id: str) -> Endpoint | None:
        try:
            return self.store.get_endpoint(endpoint_id)
        except NotFound:
            return None
