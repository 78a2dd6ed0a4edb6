"""The cluster store on etcd v3. Key layout and policies: docs/kvstore.md.

Every allocation is a read followed by a transaction that compares what was read (version or
mod_revision) and retries from the read on a lost race. Nothing takes a lock or a lease for mutual
exclusion, so a crashed agent can never wedge the others. Writes are idempotent: a write that timed out
may have committed, and the retry's read sees that and answers as the first attempt would have.
Pools and addresses live in etcd_ipam.py, networks in etcd_networks.py; hosts, endpoints, forgetting a
host and the watch here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from etcd3.events import DeleteEvent

from .base import Store
from .etcd_conn import OPS, EtcdConnection
from .etcd_ipam import RETRY
from .etcd_keys import (
    ENDPOINTS,
    HOSTS,
    NETWORKS,
    TOPOLOGY,
    address_prefix,
    dump,
    endpoint_index_key,
    endpoint_key,
    left_prefix,
    owner_prefix,
    segment,
    unchanged,
)
from .etcd_networks import EtcdNetworks
from .model import Endpoint, Event, Host, Network, NotFound


class EtcdStore(EtcdNetworks, Store):
    def __init__(
        self,
        endpoints: list[str],
        ca_cert: str | None = None,
        cert_key: str | None = None,
        cert_cert: str | None = None,
        timeout: float = 5,
    ) -> None:
        super().__init__(EtcdConnection(endpoints, ca_cert, cert_key, cert_cert, timeout))
        self._leases: dict[str, tuple[int, int]] = {}  # host_id -> (lease id, ttl)
        self._lease_lock = threading.Lock()

    # -- hosts --------------------------------------------------------------------------------------
    def register_host(self, host: Host, ttl: int = 30) -> None:
        key = HOSTS + segment(host.host_id, "host id")
        with self._lease_lock:
            lease = self._leases.get(host.host_id)
            if lease is None or lease[1] != ttl or not self._conn.keepalive(lease[0]):
                lease = (self._conn.grant(ttl), ttl)  # first call, or the old lease expired
                self._leases[host.host_id] = lease
            value = dump(host)
            self._conn.call(lambda c: c.put(key, value, lease=lease[0]))

    def list_hosts(self) -> list[Host]:
        items, _ = self._conn.prefix(HOSTS)
        return [Host.from_json(data) for _, (data, _) in items]

    # -- endpoints ----------------------------------------------------------------------------------
    def put_endpoint(self, endpoint: Endpoint) -> Endpoint:
        segment(endpoint.network_id, "network id")
        index_key = endpoint_index_key(segment(endpoint.endpoint_id, "endpoint id"))

        def attempt(_: int) -> Endpoint:
            network, index = self._conn.get(NETWORKS + endpoint.network_id, index_key)
            if network is None:
                raise NotFound(f"network {endpoint.network_id} not found")
            success = [
                OPS.put(endpoint_key(endpoint.network_id, endpoint.endpoint_id), dump(endpoint)),
                OPS.put(index_key, dump({"network_id": endpoint.network_id})),
            ]
            if index is not None and index[0]["network_id"] != endpoint.network_id:
                success.append(OPS.delete(endpoint_key(index[0]["network_id"], endpoint.endpoint_id)))
            compare = [
                OPS.create(NETWORKS + endpoint.network_id) == network[1].create_revision,
                unchanged(index_key, index),
            ]
            return endpoint if self._txn(compare, success) is not RETRY else RETRY

        return self._retry("storing an endpoint", attempt)

    def _locate_endpoint(self, endpoint_id: str) -> tuple[str, Any, str | None]:
        """(index key, index entry or None, endpoint key or None): where the endpoint's record lives."""
        index_key = endpoint_index_key(endpoint_id)
        [index] = self._conn.get(index_key)
        key = endpoint_key(index[0]["network_id"], endpoint_id) if index is not None else None
        return index_key, index, key

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        _, _, key = self._locate_endpoint(endpoint_id)
        if key is not None:
            [current] = self._conn.get(key)
            if current is not None:
                return Endpoint.from_json(current[0])
        raise NotFound(f"endpoint {endpoint_id} not found")

    def delete_endpoint(self, endpoint_id: str) -> None:
        def attempt(_: int) -> None:
            index_key, index, key = self._locate_endpoint(endpoint_id)
            if key is None:
                return None
            return self._txn([unchanged(index_key, index)], [OPS.delete(index_key), OPS.delete(key)])

        self._retry("deleting an endpoint", attempt)

    def set_endpoint_name(self, endpoint_id: str, name: str) -> None:
        def attempt(_: int) -> None:
            index_key, index, key = self._locate_endpoint(endpoint_id)
            if key is None:
                return None
            [current] = self._conn.get(key)
            if current is None or current[0].get("container_name") == name:
                return None
            renamed = replace(Endpoint.from_json(current[0]), container_name=name)
            # A delete (or a move to another network) in between fails the compare: never resurrect.
            compare = [unchanged(index_key, index), unchanged(key, current)]
            return self._txn(compare, [OPS.put(key, dump(renamed))])

        self._retry("renaming an endpoint", attempt)

    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        items, _ = self._conn.prefix(ENDPOINTS + (f"{network_id}/" if network_id else ""))
        return sorted((Endpoint.from_json(data) for _, (data, _) in items), key=lambda e: e.endpoint_id)

    # -- forgetting a dead host --------------------------------------------------------------------
    def forget_host(self, host_id: str) -> int:
        segment(host_id, "host id")
        items, _ = self._conn.prefix(ENDPOINTS)
        theirs = [Endpoint.from_json(data) for _, (data, _) in items if data.get("host_id") == host_id]
        removed = sum(self._forget_endpoint(e) for e in theirs)
        for docker_network_id in self.bindings(host_id):
            self._unbind(host_id, docker_network_id, forgetting=True)
        for pool in self.list_pools():  # after the bindings: a pool its networks no longer hold can go
            if host_id in pool.holders:
                self.release_pool(host_id, pool.pool_id)
        marks = [left_prefix(network_id) + host_id for network_id in self.left_networks(host_id)]
        self._txn([], [*(OPS.delete(key) for key in marks), OPS.delete(HOSTS + host_id)])
        return removed

    def _forget_endpoint(self, endpoint: Endpoint) -> bool:
        """Delete the endpoint and free its address (owned by its MAC in the network's pool)."""
        key = endpoint_key(endpoint.network_id, endpoint.endpoint_id)
        index_key = endpoint_index_key(endpoint.endpoint_id)

        def attempt(_: int) -> bool:
            current, index, network = self._conn.get(key, index_key, NETWORKS + endpoint.network_id)
            if current is None or current[0].get("host_id") != endpoint.host_id:
                return False
            compare = [unchanged(key, current), unchanged(index_key, index)]
            success = [OPS.delete(key)]
            if index is not None and index[0]["network_id"] == endpoint.network_id:
                success.append(OPS.delete(index_key))
            pool_id = network[0].get("pool_id") if network else None
            mac = current[0].get("mac", "")
            freed = None
            if pool_id and mac:
                owner_key = owner_prefix(pool_id) + mac
                [owner] = self._conn.get(owner_key)
                if owner is not None:
                    freed = owner[0]["address"]
                    address_key = address_prefix(pool_id) + freed
                    [address] = self._conn.get(address_key)
                    compare += [unchanged(owner_key, owner), unchanged(address_key, address)]
                    success.append(OPS.delete(owner_key))
                    if address is not None and address[0].get("owner") == mac:
                        success.append(OPS.delete(address_key))
            if self._txn(compare, success) is RETRY:
                return RETRY
            if freed:
                self._note_taken(pool_id, freed, taken=False)
            return True

        return self._retry(f"forgetting endpoint {endpoint.endpoint_id}", attempt)

    # -- watching -----------------------------------------------------------------------------------
    def snapshot(self) -> tuple[list[Network], list[Endpoint], int]:
        items, revision = self._conn.prefix(TOPOLOGY)  # one range: one revision for both kinds
        networks = [Network.from_json(d) for k, (d, _) in items if k.startswith(NETWORKS)]
        endpoints = [Endpoint.from_json(d) for k, (d, _) in items if k.startswith(ENDPOINTS)]
        return networks, sorted(endpoints, key=lambda e: e.endpoint_id), revision

    def watch(self, start_revision: int, timeout: float | None = None) -> Iterator[Event]:
        events = self._conn.watch(TOPOLOGY, start_revision, timeout)
        try:
            for raw in events:
                key = raw.key.decode()
                kind = "network" if key.startswith(NETWORKS) else "endpoint"
                deleted = isinstance(raw, DeleteEvent)
                record: Network | Endpoint | None = None
                if not deleted:
                    data = json.loads(raw.value)
                    record = Network.from_json(data) if kind == "network" else Endpoint.from_json(data)
                action = "delete" if deleted else "put"
                yield Event(kind, action, key.rsplit("/", 1)[1], record, raw.mod_revision)
        finally:
            events.close()  # cancels the server-side watch now, not at garbage collection

    def close(self) -> None:
        self._conn.close()
