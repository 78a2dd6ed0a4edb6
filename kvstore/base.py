"""The one store interface. Two implementations: ``EtcdStore`` (cluster) and ``SqliteStore`` (embedded,
single host). Both pass tests/contract unchanged. Every write is idempotent: a retried call that already
took effect answers as the first one did.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

from .model import Endpoint, Event, Host, Network, Pool


class Store(abc.ABC):
    # -- hosts --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def register_host(self, host: Host, ttl: int = 30) -> None:
        """Record this host as alive (a lease of ``ttl`` seconds in etcd); call again to refresh."""

    @abc.abstractmethod
    def list_hosts(self) -> list[Host]:
        """Hosts whose registration is alive."""

    # -- pools --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def request_pool(
        self,
        host_id: str,
        subnet: str | None,
        ip_range: str | None,
        default_range: str,
        prefixlen: int,
    ) -> Pool:
        """Claim ``subnet`` (or, if None, the first free ``/prefixlen`` inside ``default_range``) for
        ``host_id``. An existing pool with the same subnet and ip_range is returned with the host added to
        its holders (the same pool on every host). Raises Conflict if the subnet overlaps another pool, or
        equals one with a different ip_range; Exhausted if no free subnet is left."""

    @abc.abstractmethod
    def get_pool(self, pool_id: str) -> Pool:
        """Raises NotFound."""

    @abc.abstractmethod
    def release_pool(self, host_id: str, pool_id: str) -> None:
        """Drop ``host_id`` from the holders; the last holder deletes the pool and every address in it.
        Unknown pools and non-holders are a no-op."""

    # -- addresses ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def reserve_address(self, pool_id: str, owner: str, host_id: str, address: str | None = None) -> str:
        """Reserve an address of the pool for ``owner`` (a MAC address, or GATEWAY_OWNER) and return it
        as a bare IP ("10.0.0.5"). If ``owner`` already holds an address in the pool, that one is returned
        (idempotent; for the gateway this makes it the same on every host). With ``address`` set, that exact
        address: Conflict if another owner holds it, or if it is outside the subnet, the network or
        broadcast address. Without, the next free address of ip_range (or subnet), skipping network and
        broadcast addresses, round-robin after the last one handed out. Exhausted when full; NotFound
        for an unknown pool."""

    @abc.abstractmethod
    def release_address(self, pool_id: str, address: str) -> None:
        """Free the address. Unknown pool or free address: no-op. The gateway is not freed here
        (it belongs to the pool and goes with it)."""

    @abc.abstractmethod
    def list_addresses(self, pool_id: str) -> dict[str, str]:
        """address -> owner, for every reserved address of the pool (empty for an unknown pool)."""

    # -- networks -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_network(self, host_id: str, docker_network_id: str, network: Network) -> Network:
        """Bind ``docker_network_id`` on ``host_id`` to a cluster network and return the stored one.
        If the host already binds ``docker_network_id``: return that network (idempotent). Else if
        ``network.pool_id`` is set and a cluster network with that pool exists, bind to it (a network made
        on another host appearing here); Conflict if this host already binds another Docker network to
        it. Else create ``network`` with a fresh VNI (the ``vni`` field of the argument is ignored) and
        ``network_id`` as given. Exhausted when no VNI is free."""

    @abc.abstractmethod
    def network_for(self, host_id: str, docker_network_id: str) -> Network:
        """The cluster network this host's Docker network is bound to. Raises NotFound."""

    @abc.abstractmethod
    def get_network(self, network_id: str) -> Network:
        """By cluster id. Raises NotFound."""

    @abc.abstractmethod
    def list_networks(self) -> list[Network]:
        pass

    @abc.abstractmethod
    def bindings(self, host_id: str) -> dict[str, str]:
        """docker_network_id -> cluster network_id for every network bound on the host."""

    @abc.abstractmethod
    def set_network_name(self, network_id: str, name: str) -> None:
        """Record the name learned from a daemon. Unknown network: no-op."""

    @abc.abstractmethod
    def delete_network(self, host_id: str, docker_network_id: str) -> None:
        """Remove the host's binding, then the cluster network itself (record and VNI) if it has no
        endpoints left anywhere. Raises Conflict, naming the hosts, if endpoints remain on other hosts
        (nothing is changed then). Unknown binding: no-op."""

    # -- endpoints ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_endpoint(self, endpoint: Endpoint) -> Endpoint:
        """Create or overwrite. NotFound if its network does not exist."""

    @abc.abstractmethod
    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        """Raises NotFound."""

    @abc.abstractmethod
    def delete_endpoint(self, endpoint_id: str) -> None:
        """Unknown endpoint: no-op."""

    @abc.abstractmethod
    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        pass

    # -- watching -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def snapshot(self) -> tuple[list[Network], list[Endpoint], int]:
        """Every network and endpoint, and the store revision they were read at."""

    @abc.abstractmethod
    def watch(self, start_revision: int, timeout: float | None = None) -> Iterator[Event]:
        """Network and endpoint changes with revision >= ``start_revision``, in order. The iterator ends
        after ``timeout`` seconds without an event (None: never). Raises Compacted if the store no longer
        has that revision, StoreUnavailable if the connection is lost: the caller re-lists (snapshot)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""
