"""The cluster store on etcd v3. Key layout and policies: docs/kvstore.md.

Every allocation is a read followed by a transaction that compares what was read (version or
mod_revision) and retries from the read on a lost race. Nothing takes a lock or a lease for mutual
exclusion, so a crashed agent can never wedge the others. Writes are idempotent: a write that timed out
may have committed, and the retry's read sees that and answers as the first attempt would have.
Pools and addresses live in etcd_ipam.py; hosts, networks, endpoints and the watch here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace

from etcd3.events import DeleteEvent

from . import alloc
from .base import Store
from .etcd_conn import OPS, EtcdConnection, Kv, prefix_range_end
from .etcd_ipam import RETRY, EtcdIpam
from .etcd_keys import (
    ENDPOINTS,
    HOSTS,
    NETWORKS,
    ROOT,
    TOPOLOGY,
    VNIS,
    binding_key,
    dump,
    endpoint_index_key,
    endpoint_key,
    network_hosts_prefix,
    pool_network_key,
    range_delete,
    segment,
    unchanged,
)
from .model import Conflict, Endpoint, Event, Host, Network, NotFound


class EtcdStore(EtcdIpam, Store):
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

    # -- networks -----------------------------------------------------------------------------------
    def create_network(self, host_id: str, docker_network_id: str, network: Network) -> Network:
        segment(host_id, "host id")
        segment(docker_network_id, "Docker network id")
        segment(network.network_id, "network id")
        this_binding = binding_key(host_id, docker_network_id)

        def attempt(_: int) -> Network:
            pool_net_key = pool_network_key(network.pool_id) if network.pool_id else None
            binding, pool_net, by_id = self._conn.get(
                this_binding, pool_net_key or this_binding, NETWORKS + network.network_id
            )
            if binding is not None:
                [bound] = self._conn.get(NETWORKS + binding[0]["network_id"])
                if bound is not None:
                    return Network.from_json(bound[0])
                # else: a binding left behind when another host deleted the network; replace it
            target = by_id
            if pool_net_key and pool_net is not None:
                [target] = self._conn.get(NETWORKS + pool_net[0]["network_id"])
            if target is not None:
                return self._bind(host_id, docker_network_id, binding, target)
            items, _ = self._conn.prefix(VNIS, keys_only=True)
            vni = alloc.pick_vni(int(key.rsplit("/", 1)[1]) for key, _ in items)
            created = replace(network, vni=vni, created_by=network.created_by or host_id)
            compare = [
                OPS.version(NETWORKS + created.network_id) == 0,
                OPS.version(f"{VNIS}{vni}") == 0,
                unchanged(this_binding, binding),
            ]
            success = [
                OPS.put(NETWORKS + created.network_id, dump(created)),
                OPS.put(f"{VNIS}{vni}", dump({"network_id": created.network_id})),
                OPS.put(this_binding, dump({"network_id": created.network_id})),
                OPS.put(
                    network_hosts_prefix(created.network_id) + host_id,
                    dump({"docker_network_id": docker_network_id}),
                ),
            ]
            if pool_net_key:
                compare.append(unchanged(pool_net_key, pool_net))
                success.append(OPS.put(pool_net_key, dump({"network_id": created.network_id})))
            return created if self._txn(compare, success) is not RETRY else RETRY

        return self._retry("creating a network", attempt)

    def _bind(self, host_id: str, docker_network_id: str, binding: Kv | None, target: Kv) -> Network:
        network = Network.from_json(target[0])
        host_key = network_hosts_prefix(network.network_id) + host_id
        [mine] = self._conn.get(host_key)
        if mine is not None and mine[0]["docker_network_id"] != docker_network_id:
            raise Conflict(
                f"host {host_id} already binds Docker network {mine[0]['docker_network_id']} "
                f"to network {network.name or network.network_id}"
            )
        this_binding = binding_key(host_id, docker_network_id)
        done = self._txn(
            [
                OPS.create(NETWORKS + network.network_id) == target[1].create_revision,
                unchanged(this_binding, binding),
                unchanged(host_key, mine),
            ],
            [
                OPS.put(this_binding, dump({"network_id": network.network_id})),
                OPS.put(host_key, dump({"docker_network_id": docker_network_id})),
            ],
        )
        return RETRY if done is RETRY else network

    def network_for(self, host_id: str, docker_network_id: str) -> Network:
        [binding] = self._conn.get(binding_key(host_id, docker_network_id))
        if binding is not None:
            [network] = self._conn.get(NETWORKS + binding[0]["network_id"])
            if network is not None:
                return Network.from_json(network[0])
        raise NotFound(f"Docker network {docker_network_id} is not bound on host {host_id}")

    def get_network(self, network_id: str) -> Network:
        [network] = self._conn.get(NETWORKS + network_id)
        if network is None:
            raise NotFound(f"network {network_id} not found")
        return Network.from_json(network[0])

    def list_networks(self) -> list[Network]:
        items, _ = self._conn.prefix(NETWORKS)
        return [Network.from_json(data) for _, (data, _) in items]

    def bindings(self, host_id: str) -> dict[str, str]:
        prefix = f"{ROOT}bindings/{segment(host_id, 'host id')}/"
        items, _ = self._conn.prefix(prefix)
        return {key[len(prefix) :]: data["network_id"] for key, (data, _) in items}

    def set_network_name(self, network_id: str, name: str) -> None:
        key = NETWORKS + network_id

        def attempt(_: int) -> None:
            [current] = self._conn.get(key)
            if current is None or current[0].get("name") == name:
                return None
            renamed = replace(Network.from_json(current[0]), name=name)
            return self._txn([unchanged(key, current)], [OPS.put(key, dump(renamed))])

        self._retry("renaming a network", attempt)

    def delete_network(self, host_id: str, docker_network_id: str) -> None:
        this_binding = binding_key(host_id, docker_network_id)

        def attempt(_: int) -> None:
            [binding] = self._conn.get(this_binding)
            if binding is None:
                return None
            network_id = binding[0]["network_id"]
            [current] = self._conn.get(NETWORKS + network_id)
            host_key = network_hosts_prefix(network_id) + host_id
            compare = [unchanged(this_binding, binding)]
            if current is None:  # deleted from another host already: drop our binding only
                return self._txn(compare, [OPS.delete(this_binding), OPS.delete(host_key)])
            prefix = f"{ENDPOINTS}{network_id}/"
            items, revision = self._conn.prefix(prefix)
            endpoints = [Endpoint.from_json(data) for _, (data, _) in items]
            others = sorted({e.host_id for e in endpoints} - {host_id})
            if others:
                name = current[0].get("name") or network_id
                raise Conflict(f"network {name} still has endpoints on hosts {', '.join(others)}")
            network = Network.from_json(current[0])
            # No endpoint appeared since our read: a concurrent put_endpoint makes this fail and retry.
            compare += [
                unchanged(NETWORKS + network_id, current),
                OPS.mod(prefix, prefix_range_end(prefix.encode())) < revision + 1,
            ]
            success = [
                OPS.delete(this_binding),
                OPS.delete(NETWORKS + network_id),
                OPS.delete(f"{VNIS}{network.vni}"),
                range_delete(network_hosts_prefix(network_id)),
                range_delete(prefix),  # stale endpoints of this host: its daemon has none left
                *(OPS.delete(endpoint_index_key(e.endpoint_id)) for e in endpoints),
            ]
            if network.pool_id:
                success.append(OPS.delete(pool_network_key(network.pool_id)))
            return self._txn(compare, success)

        self._retry("deleting a network", attempt)

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

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        [index] = self._conn.get(endpoint_index_key(endpoint_id))
        if index is not None:
            [current] = self._conn.get(endpoint_key(index[0]["network_id"], endpoint_id))
            if current is not None:
                return Endpoint.from_json(current[0])
        raise NotFound(f"endpoint {endpoint_id} not found")

    def delete_endpoint(self, endpoint_id: str) -> None:
        index_key = endpoint_index_key(endpoint_id)

        def attempt(_: int) -> None:
            [index] = self._conn.get(index_key)
            if index is None:
                return None
            key = endpoint_key(index[0]["network_id"], endpoint_id)
            return self._txn([unchanged(index_key, index)], [OPS.delete(index_key), OPS.delete(key)])

        self._retry("deleting an endpoint", attempt)

    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        items, _ = self._conn.prefix(ENDPOINTS + (f"{network_id}/" if network_id else ""))
        return sorted((Endpoint.from_json(data) for _, (data, _) in items), key=lambda e: e.endpoint_id)

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
