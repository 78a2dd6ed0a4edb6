"""The cluster store: pyoverlay's policy (networks, VNIs, pools, addresses, endpoints, bindings, hosts,
leave/delete/forget) written once over the key-value primitive of kv.py, which etcd and the embedded
SQLite store both implement. Key layout and policies: docs/kvstore.md.

Every allocation is a read followed by a transaction that compares what was read (version or
mod_revision) and retries from the read on a lost race. Nothing takes a lock or a lease for mutual
exclusion, so a crashed agent can never wedge the others. Writes are idempotent: a write that timed out
may have committed, and the retry's read sees that and answers as the first attempt would have.
Pools and addresses live in ipam.py, networks in networks.py; hosts, endpoints, forgetting a host and
the scoped watches here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from .ipam import RETRY, adoption, adoption_keys
from .keys import (
    ENDPOINTS,
    HOSTS,
    HOSTS_SEEN,
    NETWORKS,
    REVISION_PROBE,
    address_prefix,
    bindings_prefix,
    blocks_prefix,
    decode,
    dump,
    endpoint_index_key,
    endpoint_key,
    endpoints_prefix,
    left_prefix,
    load,
    network_hosts_prefix,
    owner_prefix,
    segment,
    split_block_key,
)
from .kv import Change, Delete, Item, KeyValue, Put, Watch, same_incarnation, unchanged
from .model import Endpoint, Event, Host, IdentityConflict, Network, NotFound
from .networks import NetworkPolicy

log = logging.getLogger(__name__)

EventSink = Callable[[list[Event] | Exception], None]


def _cloned_message(host: Host, other: Host) -> str:
    seen = f"{other.address} ({other.hostname})" if other.hostname else other.address
    return (
        f"host id {host.host_id} is already registered, alive, by another host at {seen}, and this host "
        f"is {host.address}: its state directory was probably cloned from the same image (the host-id file "
        f"is copied with it). On the clone, remove STATE_DIR/host-id (/var/lib/pyoverlay/host-id by "
        f"default) and restart the agent: it then makes an id of its own"
    )


class Store(NetworkPolicy):
    """The one store interface. Every write is idempotent: a retried call that already took effect
    answers as the first one did."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv)
        self._leases: dict[str, tuple[int, int]] = {}  # host_id -> (lease id, ttl)
        self._lease_lock = threading.Lock()

    def revision(self) -> int:
        """The store's current revision: every write anywhere in the cluster advances it."""
        return self._kv.range(REVISION_PROBE, keys_only=True)[1]

    # -- hosts --------------------------------------------------------------------------------------
    def register_host(self, host: Host, ttl: int = 30) -> None:
        """Record this host as alive under a lease of ``ttl`` seconds; call again to refresh. Raises
        IdentityConflict (and writes nothing) while the host id is registered, alive, at another address
        under a lease this store did not grant: two hosts cloned from one state directory share the id.
        The same address is the same machine (an agent restarted before its old lease ran out)."""
        key = HOSTS + segment(host.host_id, "host id")
        with self._lease_lock:
            lease = self._leases.get(host.host_id)
            if lease is None or lease[1] != ttl or not self._kv.keepalive(lease[0]):
                lease = (self._kv.grant(ttl), ttl)  # first call, or the old lease expired
                self._leases[host.host_id] = lease

            def attempt(_: int) -> None:
                [current] = self._kv.get(key)
                if current is not None and current.lease != lease[0]:
                    other = Host.from_json(load(current))
                    if other.address != host.address:
                        raise IdentityConflict(_cloned_message(host, other))
                # Compare what was read: of two clones starting at the same instant only one wins.
                seen = dump({**host.to_json(), "heartbeat": time.time()})  # outlives the lease
                return self._txn(
                    [unchanged(key, current)],
                    [Put(key, dump(host), lease=lease[0]), Put(HOSTS_SEEN + host.host_id, seen)],
                )

            self._retry("registering the host", attempt)

    def list_hosts(self) -> list[Host]:
        """Hosts whose registration is alive."""
        return self.hosts_at()[0]

    def hosts_at(self) -> tuple[list[Host], int]:
        """Hosts whose registration is alive, and the revision they were read at (for watch_hosts)."""
        items, revision = self._kv.range(HOSTS)
        return [Host.from_json(load(i)) for i in items], revision

    def hosts_seen(self) -> dict[str, tuple[Host, float]]:
        """host_id -> (the host as last registered, the unix time of that heartbeat by its own clock),
        for every host that registered since this was kept and was not forgotten, alive or not."""
        items, _ = self._kv.range(HOSTS_SEEN)
        return {
            i.key[len(HOSTS_SEEN) :]: (Host.from_json(load(i)), float(load(i).get("heartbeat", 0.0)))
            for i in items
        }

    def lease_of(self, host_id: str) -> tuple[int, int] | None:
        """(lease id, ttl in seconds) this store granted ``host_id``'s registration, or None."""
        with self._lease_lock:
            return self._leases.get(host_id)

    def network_hosts(self, network_id: str) -> dict[str, str]:
        """host_id -> that host's Docker NetworkID, for every host binding the cluster network."""
        prefix = network_hosts_prefix(segment(network_id, "network id"))
        items, _ = self._kv.range(prefix)
        return {i.key[len(prefix) :]: load(i)["docker_network_id"] for i in items}

    def block_holders(self, pool_id: str) -> dict[str, str]:
        """block -> id of the host holding it, for every claimed address block of the pool."""
        items, _ = self._kv.range(blocks_prefix(pool_id))
        return {split_block_key(i.key)[1]: load(i).get("host_id", "") for i in items}

    # -- endpoints ----------------------------------------------------------------------------------
    def put_endpoint(
        self, endpoint: Endpoint, adopt_from_pool: str | None = None, adopt6_from_pool: str | None = None
    ) -> Endpoint:
        """Create or overwrite. NotFound if its network does not exist. With ``adopt_from_pool`` (and
        ``adopt6_from_pool`` for its IPv6 address), the endpoint's address in that pool passes to its MAC
        in the same transaction, as adopt_address would hand it over (or leaves it as it is, as
        adopt_address would)."""
        segment(endpoint.network_id, "network id")
        index_key = endpoint_index_key(segment(endpoint.endpoint_id, "endpoint id"))
        adopting = [
            (pool, address)
            for pool, address in ((adopt_from_pool, endpoint.address), (adopt6_from_pool, endpoint.address6))
            if pool is not None and address is not None
        ]
        adopt_keys = [key for pool, address in adopting for key in adoption_keys(pool, address, endpoint.mac)]

        def attempt(_: int) -> Endpoint:
            network, index, *held = self._kv.get(NETWORKS + endpoint.network_id, index_key, *adopt_keys)
            if network is None:
                raise NotFound(f"network {endpoint.network_id} not found")
            ops: list[Put | Delete] = [
                Put(endpoint_key(endpoint.network_id, endpoint.endpoint_id), dump(endpoint)),
                Put(index_key, dump({"network_id": endpoint.network_id})),
            ]
            if index is not None and load(index)["network_id"] != endpoint.network_id:
                ops.append(Delete(endpoint_key(load(index)["network_id"], endpoint.endpoint_id)))
            compares = [
                same_incarnation(NETWORKS + endpoint.network_id, network),
                unchanged(index_key, index),
            ]
            for n, (pool, address) in enumerate(adopting):
                current, owner_kv = held[2 * n : 2 * n + 2]
                _, more_compares, more_ops = adoption(
                    pool, address, endpoint.host_id, endpoint.mac, current, owner_kv
                )
                compares, ops = compares + more_compares, ops + more_ops
            return endpoint if self._txn(compares, ops) is not RETRY else RETRY

        return self._retry("storing an endpoint", attempt)

    def _locate_endpoint(self, endpoint_id: str) -> tuple[str, Item | None, str | None]:
        """(index key, index entry or None, endpoint key or None): where the endpoint's record lives."""
        index_key = endpoint_index_key(endpoint_id)
        [index] = self._kv.get(index_key)
        key = endpoint_key(load(index)["network_id"], endpoint_id) if index is not None else None
        return index_key, index, key

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        """Raises NotFound."""
        _, _, key = self._locate_endpoint(endpoint_id)
        if key is not None:
            [current] = self._kv.get(key)
            if current is not None:
                return Endpoint.from_json(load(current))
        raise NotFound(f"endpoint {endpoint_id} not found")

    def delete_endpoint(self, endpoint_id: str) -> None:
        """Unknown endpoint: no-op."""

        def attempt(_: int) -> None:
            index_key, index, key = self._locate_endpoint(endpoint_id)
            if key is None:
                return None
            return self._txn([unchanged(index_key, index)], [Delete(index_key), Delete(key)])

        self._retry("deleting an endpoint", attempt)

    def set_endpoint_name(self, endpoint_id: str, name: str, aliases: tuple[str, ...] = ()) -> None:
        """Set the container_name and aliases of an existing endpoint, changing nothing else, atomically:
        a put event follows. Unknown endpoint (or one deleted meanwhile: the delete wins) or the same
        names: no-op, never a write."""

        def attempt(_: int) -> None:
            index_key, index, key = self._locate_endpoint(endpoint_id)
            if key is None:
                return None
            [current] = self._kv.get(key)
            if current is None:
                return None
            endpoint = Endpoint.from_json(load(current))
            if (endpoint.container_name, endpoint.aliases) == (name, tuple(aliases)):
                return None
            renamed = replace(endpoint, container_name=name, aliases=tuple(aliases))
            # A delete (or a move to another network) in between fails the compare: never resurrect.
            compares = [unchanged(index_key, index), unchanged(key, current)]
            return self._txn(compares, [Put(key, dump(renamed))])

        self._retry("renaming an endpoint", attempt)

    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        """The endpoints of one network, or of every network (an operator's view: a range of all)."""
        if network_id is not None:
            return self.endpoints_at(network_id)[0]
        items, _ = self._kv.range(ENDPOINTS)
        return sorted((Endpoint.from_json(load(i)) for i in items), key=lambda e: e.endpoint_id)

    def endpoints_at(self, network_id: str) -> tuple[list[Endpoint], int]:
        """The network's endpoints, and the revision they were read at (for watch_endpoints)."""
        items, revision = self._kv.range(endpoints_prefix(segment(network_id, "network id")))
        return sorted((Endpoint.from_json(load(i)) for i in items), key=lambda e: e.endpoint_id), revision

    # -- forgetting a dead host --------------------------------------------------------------------
    def knows_host(self, host_id: str) -> bool:
        """Whether the store holds anything of the host that forget_host removes: its registration,
        endpoints, bindings, pool holds or "left" marks. False after forget_host."""
        registration, seen = self._kv.get(HOSTS + segment(host_id, "host id"), HOSTS_SEEN + host_id)
        return (
            registration is not None
            or seen is not None
            or bool(self.bindings(host_id))
            or bool(self.left_networks(host_id))
            or any(host_id in pool.holders for pool in self.list_pools())
            or bool(self.host_blocks(host_id))
            or any(e.host_id == host_id for e in self.list_endpoints())
        )

    def forget_host(self, host_id: str) -> int:
        """Remove what a host an operator declared dead left behind, and return how many endpoints
        that was. Every endpoint of the host is deleted and its address freed (the one its MAC owns
        in the network's pool). Each of its bindings is dropped; a cluster network no other host binds
        goes with it (as in delete_network), one that other hosts bind stays even without endpoints.
        The host is then dropped from every pool's holders as by release_pool, its "left" marks are
        cleared, and its registration deleted. Idempotent (a second call returns 0), and safe against
        allocations and deletions running at the same time on other hosts."""
        segment(host_id, "host id")
        theirs = [e for e in self.list_endpoints() if e.host_id == host_id]
        removed = sum(self._forget_endpoint(e) for e in theirs)
        for docker_network_id in self.bindings(host_id):
            self._unbind(host_id, docker_network_id, forgetting=True)
        for pool in self.list_pools():  # after the bindings: a pool its networks no longer hold can go
            if host_id in pool.holders:
                self.release_pool(host_id, pool.pool_id)
        self.drop_host_blocks(host_id)  # reclaimed: other hosts may allocate there now
        marks = [left_prefix(network_id) + host_id for network_id in self.left_networks(host_id)]
        self._kv.txn(
            [], [*(Delete(key) for key in marks), Delete(HOSTS + host_id), Delete(HOSTS_SEEN + host_id)]
        )
        return removed

    def _forget_endpoint(self, endpoint: Endpoint) -> bool:
        """Delete the endpoint and free its address (owned by its address_owner in the network's pool)."""
        key = endpoint_key(endpoint.network_id, endpoint.endpoint_id)
        index_key = endpoint_index_key(endpoint.endpoint_id)

        def attempt(_: int) -> bool:
            current, index, network = self._kv.get(key, index_key, NETWORKS + endpoint.network_id)
            if current is None or load(current).get("host_id") != endpoint.host_id:
                return False
            compares = [unchanged(key, current), unchanged(index_key, index)]
            ops = [Delete(key)]
            if index is not None and load(index)["network_id"] == endpoint.network_id:
                ops.append(Delete(index_key))
            record = Network.from_json(load(network)) if network else None
            owner_id = Endpoint.from_json(load(current)).address_owner  # a MAC, or a host exposure's id
            freed: list[tuple[str, str]] = []
            for pool_id in record.pool_ids if record and owner_id else ():
                owner_key = owner_prefix(pool_id) + owner_id
                [owner] = self._kv.get(owner_key)
                if owner is not None:
                    address_key = address_prefix(pool_id) + load(owner)["address"]
                    [address] = self._kv.get(address_key)
                    compares += [unchanged(owner_key, owner), unchanged(address_key, address)]
                    ops.append(Delete(owner_key))
                    if address is not None and load(address).get("owner") == owner_id:
                        ops.append(Delete(address_key))
                    freed.append((pool_id, load(owner)["address"]))
            if self._txn(compares, ops) is RETRY:
                return RETRY
            for pool_id, address in freed:
                self._note_taken(pool_id, address, taken=False)
            return True

        return self._retry(f"forgetting endpoint {endpoint.endpoint_id}", attempt)

    # -- scoped watches -----------------------------------------------------------------------------
    # A host lists what it needs at revision R (networks_at, bindings_at, endpoints_at) and watches
    # each from R + 1: the network list, its own bindings, and the endpoints of the networks it binds.
    # The sink gets batches of Events in order, or the error that ended the watch (Compacted,
    # StoreUnavailable): then list again. Watches start at once (StoreUnavailable/Compacted if not).
    def watch_networks(self, start_revision: int, sink: EventSink) -> Watch:
        return self._watch(NETWORKS, start_revision, sink, "network", Network.from_json)

    def watch_bindings(self, host_id: str, start_revision: int, sink: EventSink) -> Watch:
        """Events of kind "binding": key_id the Docker network id, record the cluster network id."""
        prefix = bindings_prefix(segment(host_id, "host id"))
        return self._watch(prefix, start_revision, sink, "binding", lambda data: data["network_id"])

    def watch_hosts(self, start_revision: int, sink: EventSink) -> Watch:
        """Registrations made, refreshed, expired or forgotten (the event loop's VTEP allow-list)."""
        return self._watch(HOSTS, start_revision, sink, "host", Host.from_json)

    def watch_endpoints(self, network_id: str, start_revision: int, sink: EventSink) -> Watch:
        prefix = endpoints_prefix(segment(network_id, "network id"))
        return self._watch(prefix, start_revision, sink, "endpoint", Endpoint.from_json)

    def _watch(
        self, prefix: str, start: int, sink: EventSink, kind: str, parse: Callable[[dict], object]
    ) -> Watch:
        def deliver(batch: list[Change] | Exception) -> None:
            if isinstance(batch, Exception):
                sink(batch)
                return
            events = []
            for change in batch:
                try:
                    record = None if change.value is None else parse(decode(change.value))
                except (ValueError, KeyError, TypeError) as exc:  # one bad record never stops a host
                    log.warning("ignoring unreadable %s %s: %s", kind, change.key, exc)
                    continue
                action = "delete" if change.value is None else "put"
                events.append(Event(kind, action, change.key.rsplit("/", 1)[1], record, change.revision))
            if events:
                sink(events)

        return self._kv.watch(prefix, start, deliver)

    def close(self) -> None:
        """Release connections and threads."""
        self._kv.close()
