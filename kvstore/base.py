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

    @abc.abstractmethod
    def forget_host(self, host_id: str) -> int:
        """Remove what a host an operator declared dead left behind, and return how many endpoints
        that was. Every endpoint of the host is deleted and its address freed (the one its MAC owns
        in the network's pool). Each of its bindings is dropped; a cluster network no other host binds
        goes with it (as in delete_network), one that other hosts bind stays even without endpoints.
        The host is then dropped from every pool's holders as by release_pool, its "left" marks are
        cleared, and its registration deleted. Idempotent (a second call returns 0), and safe against
        allocations and deletions running at the same time on other hosts."""

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
    def list_pools(self) -> list[Pool]:
        """Every pool, by subnet."""

    @abc.abstractmethod
    def release_pool(self, host_id: str, pool_id: str) -> None:
        """Drop ``host_id`` from the holders; the last holder deletes the pool and every address in it,
        unless the pool's cluster network still exists and some host (the caller included) binds it:
        Docker releases the pool before it deletes the network, and that delete_network then deletes
        the pool (with no holders left) together with the network. Unknown pools and non-holders are a
        no-op."""

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
        on another host appearing here, or this host coming back to a network it had left: the "left"
        mark is cleared); Conflict if this host already binds another Docker network to it. Else create
        ``network`` with a fresh VNI (the ``vni`` field of the argument is ignored) and ``network_id`` as
        given. Exhausted when no VNI is free."""

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
        """docker_network_id -> cluster network_id for every network bound on the host. May name a
        cluster network deleted from another host since: the host's own delete_network drops it."""

    @abc.abstractmethod
    def left_networks(self, host_id: str) -> set[str]:
        """Cluster network ids the host left (delete_network returned False) and that still exist:
        the host's daemon must not get them back. A mark goes when the host binds the network again
        (create_network) and when the cluster network is deleted."""

    @abc.abstractmethod
    def set_network_name(self, network_id: str, name: str) -> None:
        """Record the name learned from a daemon. Unknown network: no-op."""

    @abc.abstractmethod
    def delete_network(self, host_id: str, docker_network_id: str) -> bool:
        """Remove the host's binding and the host's own leftover endpoints in the network; never
        refuses (Docker ignores a DeleteNetwork error and removes the network anyway). Then, if no
        endpoint remains on any host, or no other host binds the network, delete the cluster network
        (record, VNI, pool mapping, every endpoint left in it, every host's "left" mark for it, and its
        pool if every holder released it already) and return True: the other hosts see it vanish from
        list_networks and watch. Otherwise the cluster network stays, the host is marked as having left
        it (left_networks) and the answer is False. False too, with only the binding dropped, when the
        cluster network was deleted already (another host's delete); unknown binding: no-op, False."""

    @abc.abstractmethod
    def unbind(self, host_id: str, docker_network_id: str) -> None:
        """Drop only this host's binding, to undo a join that failed: the cluster network, its endpoints
        and other hosts' bindings stay, and no "left" mark is set. Unknown binding: no-op."""

    # -- endpoints ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_endpoint(self, endpoint: Endpoint) -> Endpoint:
        """Create or overwrite. NotFound if its network does not exist."""

    @abc.abstractmethod
    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        """Raises NotFound."""

    @abc.abstractmethod
    def set_endpoint_name(self, endpoint_id: str, name: str) -> None:
        """Set the container_name of an existing endpoint, changing nothing else, atomically: a
        put event follows. Unknown endpoint (or one deleted meanwhile: the delete wins) or the same
        name: no-op, never a write."""

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
