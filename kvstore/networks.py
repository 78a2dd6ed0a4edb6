"""Networks: the cluster records, each host's bindings to them, and leaving or deleting one. Written
once over the key-value primitive. Policies: docs/kvstore.md.
"""

from __future__ import annotations

from dataclasses import replace

from . import alloc
from .block_policy import BlockPolicy
from .ipam import RETRY
from .keys import (
    LEFT,
    NETWORKS,
    POOLS_INDEX,
    VNIS,
    address_prefix,
    binding_key,
    bindings_prefix,
    dump,
    endpoint_index_key,
    endpoint_key,
    endpoints_prefix,
    left_prefix,
    load,
    network_hosts_prefix,
    owner_prefix,
    pool_key,
    pool_network_key,
    segment,
)
from .kv import Delete, Item, Put, absent, prefix_unchanged, present, same_incarnation, unchanged
from .model import HOST_KIND, Conflict, Endpoint, Network, NotFound, Pool


class NetworkPolicy(BlockPolicy):
    def create_network(self, host_id: str, docker_network_id: str, network: Network) -> Network:
        """Bind ``docker_network_id`` on ``host_id`` to a cluster network and return the stored one.
        If the host already binds ``docker_network_id``: return that network (idempotent). Else if
        a cluster network with ``network``'s first pool (IPv4, else IPv6) exists, bind to it (a network
        made on another host appearing here, or this host coming back to a network it had left: the "left"
        mark is cleared); Conflict if this host already binds another Docker network to it. Else create
        ``network`` with a fresh VNI (the ``vni`` field of the argument is ignored) and ``network_id`` as
        given. Exhausted when no VNI is free."""
        segment(host_id, "host id")
        segment(docker_network_id, "Docker network id")
        segment(network.network_id, "network id")
        this_binding = binding_key(host_id, docker_network_id)

        def attempt(_: int) -> Network:
            # the first pool (IPv4, else IPv6) names the network across hosts; every pool maps to it
            pool_net_keys = [pool_network_key(pool_id) for pool_id in network.pool_ids]
            binding, by_id, *pool_nets = self._kv.get(
                this_binding, NETWORKS + network.network_id, *pool_net_keys
            )
            pool_net = pool_nets[0] if pool_nets else None
            if binding is not None:
                [bound] = self._kv.get(NETWORKS + load(binding)["network_id"])
                if bound is not None:
                    return Network.from_json(load(bound))
                # else: a binding left behind when another host deleted the network; replace it
            target = by_id
            if pool_net is not None:
                [target] = self._kv.get(NETWORKS + load(pool_net)["network_id"])
            if target is not None:
                return self._bind(host_id, docker_network_id, binding, target)
            items, _ = self._kv.range(VNIS, keys_only=True)
            vni = alloc.pick_vni(int(i.key.rsplit("/", 1)[1]) for i in items)
            created = replace(network, vni=vni, created_by=network.created_by or host_id)
            compare = [
                absent(NETWORKS + created.network_id),
                absent(f"{VNIS}{vni}"),
                unchanged(this_binding, binding),
            ]
            success = [
                Put(NETWORKS + created.network_id, dump(created)),
                Put(f"{VNIS}{vni}", dump({"network_id": created.network_id})),
                Put(this_binding, dump({"network_id": created.network_id})),
                Put(
                    network_hosts_prefix(created.network_id) + host_id,
                    dump({"docker_network_id": docker_network_id}),
                ),
            ]
            for key, item in zip(pool_net_keys, pool_nets, strict=True):
                compare.append(unchanged(key, item))
                success.append(Put(key, dump({"network_id": created.network_id})))
            return created if self._txn(compare, success) is not RETRY else RETRY

        return self._retry("creating a network", attempt)

    def _bind(self, host_id: str, docker_network_id: str, binding: Item | None, target: Item) -> Network:
        network = Network.from_json(load(target))
        host_key = network_hosts_prefix(network.network_id) + host_id
        [mine] = self._kv.get(host_key)
        if mine is not None and load(mine)["docker_network_id"] != docker_network_id:
            raise Conflict(
                f"host {host_id} already binds Docker network {load(mine)['docker_network_id'][:12]} "
                f"to network {network.name or network.network_id[:12]}"
            )
        this_binding = binding_key(host_id, docker_network_id)
        done = self._txn(
            [
                same_incarnation(NETWORKS + network.network_id, target),
                unchanged(this_binding, binding),
                unchanged(host_key, mine),
            ],
            [
                Put(this_binding, dump({"network_id": network.network_id})),
                Put(host_key, dump({"docker_network_id": docker_network_id})),
                Delete(left_prefix(network.network_id) + host_id),  # back on a network it left
            ],
        )
        return RETRY if done is RETRY else network

    def network_for(self, host_id: str, docker_network_id: str) -> Network:
        """The cluster network this host's Docker network is bound to. Raises NotFound."""
        [binding] = self._kv.get(binding_key(host_id, docker_network_id))
        if binding is not None:
            [network] = self._kv.get(NETWORKS + load(binding)["network_id"])
            if network is not None:
                return Network.from_json(load(network))
        raise NotFound(f"Docker network {docker_network_id} is not bound on host {host_id}")

    def get_network(self, network_id: str) -> Network:
        """By cluster id. Raises NotFound."""
        [network] = self._kv.get(NETWORKS + network_id)
        if network is None:
            raise NotFound(f"network {network_id} not found")
        return Network.from_json(load(network))

    def list_networks(self) -> list[Network]:
        return self.networks_at()[0]

    def networks_at(self) -> tuple[list[Network], int]:
        """Every cluster network, and the revision they were read at (for watch_networks)."""
        items, revision = self._kv.range(NETWORKS)
        return [Network.from_json(load(i)) for i in items], revision

    def bindings(self, host_id: str) -> dict[str, str]:
        """docker_network_id -> cluster network_id for every network bound on the host. May name a
        cluster network deleted from another host since: the host's own delete_network drops it."""
        return self.bindings_at(host_id)[0]

    def bindings_at(self, host_id: str) -> tuple[dict[str, str], int]:
        """bindings(), and the revision it was read at (for watch_bindings)."""
        prefix = bindings_prefix(segment(host_id, "host id"))
        items, revision = self._kv.range(prefix)
        return {i.key[len(prefix) :]: load(i)["network_id"] for i in items}, revision

    def left_networks(self, host_id: str) -> set[str]:
        """Cluster network ids the host left (delete_network returned False) and that still exist:
        the host's daemon must not get them back. A mark goes when the host binds the network again
        (create_network) and when the cluster network is deleted."""
        items, _ = self._kv.range(LEFT, keys_only=True)
        marks = (i.key[len(LEFT) :].split("/") for i in items)
        return {network_id for network_id, host in marks if host == host_id}

    def set_network_name(self, network_id: str, name: str) -> None:
        """Record the name learned from a daemon. Unknown network: no-op."""
        key = NETWORKS + network_id

        def attempt(_: int) -> None:
            [current] = self._kv.get(key)
            if current is None or load(current).get("name") == name:
                return None
            renamed = replace(Network.from_json(load(current)), name=name)
            return self._txn([unchanged(key, current)], [Put(key, dump(renamed))])

        self._retry("renaming a network", attempt)

    def unbind(self, host_id: str, docker_network_id: str) -> None:
        """Drop only this host's binding, to undo a join that failed: the cluster network, its endpoints
        and other hosts' bindings stay, and no "left" mark is set. Unknown binding: no-op."""
        this_binding = binding_key(host_id, docker_network_id)

        def attempt(_: int) -> None:
            [binding] = self._kv.get(this_binding)
            if binding is None:
                return None
            host_key = network_hosts_prefix(load(binding)["network_id"]) + host_id
            done = self._txn([unchanged(this_binding, binding)], [Delete(this_binding), Delete(host_key)])
            return RETRY if done is RETRY else None

        self._retry("unbinding a network", attempt)

    def delete_network(self, host_id: str, docker_network_id: str) -> bool:
        """Remove the host's binding and the host's own leftover endpoints in the network; never
        refuses (Docker ignores a DeleteNetwork error and removes the network anyway). Then, if no
        endpoint remains on any host, or no other host binds the network, delete the cluster network
        (record, VNI, pool mapping, every endpoint left in it, every host's "left" mark for it, and its
        pool if every holder released it already) and return True: the other hosts see it vanish from
        list_networks and watch. Otherwise the cluster network stays, the host is marked as having left
        it (left_networks) and the answer is False. False too, with only the binding dropped, when the
        cluster network was deleted already (another host's delete); unknown binding: no-op, False."""
        return self._unbind(host_id, docker_network_id, forgetting=False)

    def _unbind(self, host_id: str, docker_network_id: str, forgetting: bool) -> bool:
        """Drop the binding; delete the cluster network as delete_network (or, when ``forgetting`` a
        dead host, only if no other host binds it) or else mark the host as having left it."""
        this_binding = binding_key(host_id, docker_network_id)

        def attempt(_: int) -> bool:
            [binding] = self._kv.get(this_binding)
            if binding is None:
                return False
            network_id = load(binding)["network_id"]
            [current] = self._kv.get(NETWORKS + network_id)
            host_key = network_hosts_prefix(network_id) + host_id
            mark = left_prefix(network_id) + host_id
            compare = [unchanged(this_binding, binding)]
            unbind = [Delete(this_binding), Delete(host_key)]
            if current is None:  # deleted from another host already: drop our binding only
                return RETRY if self._txn(compare, [*unbind, Delete(mark)]) is RETRY else False
            in_network = endpoints_prefix(network_id)
            items, endpoints_rev = self._kv.range(in_network)
            endpoints = [(i.key, Endpoint.from_json(load(i))) for i in items]
            hosts_prefix = network_hosts_prefix(network_id)
            bound, hosts_rev = self._kv.range(hosts_prefix, keys_only=True)
            other_binders = [i.key for i in bound if i.key != host_key]
            # another host's exposure (pyoverlay expose) does not keep a network in use: only containers
            theirs = [key for key, e in endpoints if e.host_id != host_id and e.kind != HOST_KIND]
            # What was read still holds: nothing was added, and the witnesses of "still in use" exist.
            compare += [
                unchanged(NETWORKS + network_id, current),
                prefix_unchanged(in_network, endpoints_rev),
                prefix_unchanged(hosts_prefix, hosts_rev),
            ]
            in_use = bool(other_binders) if forgetting else bool(other_binders and theirs)
            if in_use:
                compare.append(present(other_binders[0]))
                mine = [e for _, e in endpoints if e.host_id == host_id]
                success = [*unbind, *self._endpoint_deletion(network_id, [e.endpoint_id for e in mine])]
                pool_id = load(current).get("pool_id")
                for exposed in (e for e in mine if e.kind == HOST_KIND and pool_id):  # its address goes too
                    more_compare, more_success = self._address_release(pool_id, exposed.address_owner)
                    compare += more_compare
                    success += more_success
                if not forgetting:
                    compare.append(present(theirs[0]))
                    success.append(Put(mark, dump({})))
                return RETRY if self._txn(compare, success) is RETRY else False
            network = Network.from_json(load(current))
            success = [
                *unbind,
                Delete(NETWORKS + network_id),
                Delete(f"{VNIS}{network.vni}"),
                Delete(hosts_prefix, prefix=True),
                Delete(left_prefix(network_id), prefix=True),
                Delete(in_network, prefix=True),  # stale: Docker deletes a network only without endpoints
                *(Delete(endpoint_index_key(e.endpoint_id)) for _, e in endpoints),
            ]
            success += [Delete(pool_network_key(pool_id)) for pool_id in network.pool_ids]
            more_compare, more_success = self._drop_pools_if_released(network.pool_ids)
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
                Delete(endpoint_key(network_id, endpoint_id)),
                Delete(endpoint_index_key(endpoint_id)),
            )
        ]

    def _address_release(self, pool_id: str, owner: str) -> tuple[list, list]:
        """Compares and operations that free the address ``owner`` holds in the pool, if any."""
        owner_key = owner_prefix(pool_id) + owner
        [held] = self._kv.get(owner_key)
        if held is None:
            return [unchanged(owner_key, None)], []
        address_key = address_prefix(pool_id) + load(held)["address"]
        [address] = self._kv.get(address_key)
        ops = [Delete(owner_key)]
        if address is not None and load(address).get("owner") == owner:
            ops.append(Delete(address_key))
        return [unchanged(owner_key, held), unchanged(address_key, address)], ops

    def _drop_pools_if_released(self, pool_ids: tuple[str, ...]) -> tuple[list, list]:
        """The pools of a network being deleted go with it if every holder released them already (they
        kept them for this deletion). Comparing them unchanged orders this against a racing release."""
        index, *currents = self._kv.get(POOLS_INDEX, *(pool_key(p) for p in pool_ids))
        compare, released = [], {}
        for pool_id, current in zip(pool_ids, currents, strict=True):
            if current is None or Pool.from_json(load(current)).holders:
                compare.append(unchanged(pool_key(pool_id), current))
            else:
                released[pool_id] = current
        if not released:
            return compare, []
        more_compare, ops = self._pools_deletion(released, index)
        return compare + more_compare, ops
