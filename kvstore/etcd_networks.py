"""Networks on etcd: the cluster records, each host's bindings to them, and leaving or deleting one.
Policies: docs/kvstore.md.
"""

from __future__ import annotations

from dataclasses import replace

from . import alloc
from .etcd_conn import OPS, Kv
from .etcd_ipam import RETRY, EtcdIpam
from .etcd_keys import (
    ENDPOINTS,
    LEFT,
    NETWORKS,
    POOLS_INDEX,
    ROOT,
    VNIS,
    binding_key,
    dump,
    endpoint_index_key,
    endpoint_key,
    left_prefix,
    network_hosts_prefix,
    pool_key,
    pool_network_key,
    prefix_unchanged,
    range_delete,
    segment,
    unchanged,
)
from .model import Conflict, Endpoint, Network, NotFound, Pool


class EtcdNetworks(EtcdIpam):
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
                OPS.delete(left_prefix(network.network_id) + host_id),  # back on a network it left
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

    def left_networks(self, host_id: str) -> set[str]:
        items, _ = self._conn.prefix(LEFT, keys_only=True)
        marks = (key[len(LEFT) :].split("/") for key, _ in items)
        return {network_id for network_id, host in marks if host == host_id}

    def set_network_name(self, network_id: str, name: str) -> None:
        key = NETWORKS + network_id

        def attempt(_: int) -> None:
            [current] = self._conn.get(key)
            if current is None or current[0].get("name") == name:
                return None
            renamed = replace(Network.from_json(current[0]), name=name)
            return self._txn([unchanged(key, current)], [OPS.put(key, dump(renamed))])

        self._retry("renaming a network", attempt)

    def unbind(self, host_id: str, docker_network_id: str) -> None:
        this_binding = binding_key(host_id, docker_network_id)

        def attempt(_: int) -> None:
            [binding] = self._conn.get(this_binding)
            if binding is None:
                return None
            host_key = network_hosts_prefix(binding[0]["network_id"]) + host_id
            done = self._txn(
                [unchanged(this_binding, binding)], [OPS.delete(this_binding), OPS.delete(host_key)]
            )
            return RETRY if done is RETRY else None

        self._retry("unbinding a network", attempt)

    def delete_network(self, host_id: str, docker_network_id: str) -> bool:
        return self._unbind(host_id, docker_network_id, forgetting=False)

    def _unbind(self, host_id: str, docker_network_id: str, forgetting: bool) -> bool:
        """Drop the binding; delete the cluster network as delete_network (or, when ``forgetting`` a
        dead host, only if no other host binds it) or else mark the host as having left it."""
        this_binding = binding_key(host_id, docker_network_id)

        def attempt(_: int) -> bool:
            [binding] = self._conn.get(this_binding)
            if binding is None:
                return False
            network_id = binding[0]["network_id"]
            [current] = self._conn.get(NETWORKS + network_id)
            host_key = network_hosts_prefix(network_id) + host_id
            mark = left_prefix(network_id) + host_id
            compare = [unchanged(this_binding, binding)]
            unbind = [OPS.delete(this_binding), OPS.delete(host_key)]
            if current is None:  # deleted from another host already: drop our binding only
                return RETRY if self._txn(compare, [*unbind, OPS.delete(mark)]) is RETRY else False
            endpoints_prefix = f"{ENDPOINTS}{network_id}/"
            items, endpoints_rev = self._conn.prefix(endpoints_prefix)
            endpoints = [(key, Endpoint.from_json(data)) for key, (data, _) in items]
            hosts_prefix = network_hosts_prefix(network_id)
            bound, hosts_rev = self._conn.prefix(hosts_prefix, keys_only=True)
            other_binders = [key for key, _ in bound if key != host_key]
            theirs = [key for key, e in endpoints if e.host_id != host_id]
            # What was read still holds: nothing was added, and the witnesses of "still in use" exist.
            compare += [
                unchanged(NETWORKS + network_id, current),
                prefix_unchanged(endpoints_prefix, endpoints_rev),
                prefix_unchanged(hosts_prefix, hosts_rev),
            ]
            in_use = bool(other_binders) if forgetting else bool(other_binders and theirs)
            if in_use:
                compare.append(OPS.version(other_binders[0]) > 0)
                mine = [e.endpoint_id for _, e in endpoints if e.host_id == host_id]
                success = [*unbind, *self._endpoint_deletion(network_id, mine)]
                if not forgetting:
                    compare.append(OPS.version(theirs[0]) > 0)
                    success.append(OPS.put(mark, dump({})))
                return RETRY if self._txn(compare, success) is RETRY else False
            network = Network.from_json(current[0])
            success = [
                *unbind,
                OPS.delete(NETWORKS + network_id),
                OPS.delete(f"{VNIS}{network.vni}"),
                range_delete(hosts_prefix),
                range_delete(left_prefix(network_id)),
                range_delete(endpoints_prefix),  # stale: Docker deletes a network only without endpoints
                *(OPS.delete(endpoint_index_key(e.endpoint_id)) for _, e in endpoints),
            ]
            if network.pool_id:
                success.append(OPS.delete(pool_network_key(network.pool_id)))
                more_compare, more_success = self._drop_pool_if_released(network.pool_id)
                compare += more_compare
                success += more_success
            return RETRY if self._txn(compare, success) is RETRY else True

        return self._retry("deleting a network", attempt)

    @staticmethod
    def _endpoint_deletion(network_id: str, endpoint_ids: list[str]) -> list:
        return [
            op
            for endpoint_id in endpoint_ids
            for op in (
                OPS.delete(endpoint_key(network_id, endpoint_id)),
                OPS.delete(endpoint_index_key(endpoint_id)),
            )
        ]

    def _drop_pool_if_released(self, pool_id: str) -> tuple[list, list]:
        """The pool of a network being deleted goes with it if every holder released it already (they
        kept it for this deletion). Comparing it unchanged orders this against a racing release."""
        index, current = self._conn.get(POOLS_INDEX, pool_key(pool_id))
        if current is None or Pool.from_json(current[0]).holders:
            return [unchanged(pool_key(pool_id), current)], []
        return self._pool_deletion(pool_id, index, current)
