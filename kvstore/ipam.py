"""Pools and addresses: the IPAM half of the cluster policy, and the compare-and-swap retry loop every
part of it uses. Written once over the key-value primitive (kv.py). Policies: docs/kvstore.md.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from ipaddress import ip_network
from typing import Any, TypeVar

from . import alloc, blocks
from .keys import (
    POOLS,
    POOLS_INDEX,
    address_prefix,
    blocks_prefix,
    claims_prefix,
    cursor_key,
    dump,
    load,
    network_hosts_prefix,
    owner_prefix,
    pool_key,
    pool_network_key,
)
from .kv import (
    Compare,
    Delete,
    Item,
    KeyValue,
    Put,
    absent,
    prefix_unchanged,
    present,
    same_incarnation,
    unchanged,
)
from .model import GATEWAY_OWNER, REQUEST_OWNER_PREFIX, Conflict, Exhausted, NotFound, Pool, StoreUnavailable

T = TypeVar("T")
MAX_ATTEMPTS = 64
TAKEN_CACHE_SECONDS = 30.0
RETRY: Any = object()  # what an attempt returns when its transaction lost a race


class IpamPolicy:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        # pool_id -> (pool create_revision, listed at, reserved addresses): see _taken()
        self._taken_cache: dict[str, tuple[int, float, set[int]]] = {}
        self._taken_lock = threading.Lock()

    def _retry(self, what: str, attempt: Callable[[int], T]) -> T:
        for n in range(MAX_ATTEMPTS):
            result = attempt(n)
            if result is not RETRY:
                return result
            time.sleep(random.uniform(0, min(0.05, 0.002 * (n + 1))))  # spread out racing writers
        raise StoreUnavailable(f"gave up {what} after {MAX_ATTEMPTS} conflicting attempts; try again")

    def _txn(self, compares: list[Compare], ops: list[Any]) -> Any:
        """None if the transaction committed, RETRY if a compare failed."""
        return None if self._kv.txn(compares, ops) else RETRY

    # -- pools --------------------------------------------------------------------------------------
    def request_pool(
        self,
        host_id: str,
        subnet: str | None,
        ip_range: str | None,
        default_range: str,
        prefixlen: int,
        block_size: int = 0,
    ) -> Pool:
        """Claim ``subnet`` (or, if None, the first free ``/prefixlen`` inside ``default_range``) for
        ``host_id``. An existing pool with the same subnet and ip_range is returned with the host added to
        its holders (the same pool on every host). A new pool is split into blocks of ``block_size``
        (blocks.block_prefixlen; 0: none), for good. Raises Conflict if the subnet overlaps another pool,
        or equals one with a different ip_range; Exhausted if no free subnet is left."""

        def attempt(_: int) -> Pool:
            [index] = self._kv.get(POOLS_INDEX)
            pools: dict[str, str | None] = load(index).get("pools", {}) if index else {}
            key, rng = alloc.plan_pool(subnet, ip_range, default_range, prefixlen, pools)
            if key in pools:
                [current] = self._kv.get(pool_key(key))
                if current is None:
                    return RETRY  # released under our feet; the index is gone too by now
                pool = Pool.from_json(load(current))
                if host_id in pool.holders:
                    return pool
                pool = replace(pool, holders=(*pool.holders, host_id))
                done = self._txn([unchanged(pool_key(key), current)], [Put(pool_key(key), dump(pool))])
                return RETRY if done is RETRY else pool
            split = blocks.block_prefixlen(key, rng, block_size)
            pool = Pool(pool_id=key, subnet=key, ip_range=rng, holders=(host_id,), block_prefixlen=split)
            done = self._txn(
                [unchanged(POOLS_INDEX, index), absent(pool_key(key))],
                [Put(POOLS_INDEX, dump({"pools": {**pools, key: rng}})), Put(pool_key(key), dump(pool))],
            )
            return RETRY if done is RETRY else pool

        return self._retry("claiming a pool", attempt)

    def get_pool(self, pool_id: str) -> Pool:
        """Raises NotFound."""
        [current] = self._kv.get(pool_key(pool_id))
        if current is None:
            raise NotFound(f"pool {pool_id} not found")
        return Pool.from_json(load(current))

    def list_pools(self) -> list[Pool]:
        """Every pool, by subnet (IPv4 first)."""
        items, _ = self._kv.range(POOLS)
        pools = (Pool.from_json(load(i)) for i in items)
        return sorted(
            pools, key=lambda p: (ip_network(p.subnet).version, int(ip_network(p.subnet).network_address))
        )

    def release_pool(self, host_id: str, pool_id: str) -> None:
        """Drop ``host_id`` from the holders; the last holder deletes the pool and every address in it,
        unless the pool's cluster network still exists and some host (the caller included) binds it:
        Docker releases the pool before it deletes the network, and that delete_network then deletes
        the pool (with no holders left) together with the network. Unknown pools and non-holders are a
        no-op."""
        mapping_key = pool_network_key(pool_id)

        def attempt(_: int) -> None:
            index, current, mapping = self._kv.get(POOLS_INDEX, pool_key(pool_id), mapping_key)
            if current is None:
                return None
            pool = Pool.from_json(load(current))
            if host_id not in pool.holders:
                return None
            holders = tuple(h for h in pool.holders if h != host_id)
            keep = [Put(pool_key(pool_id), dump(replace(pool, holders=holders)))]
            if holders:
                return self._txn([unchanged(pool_key(pool_id), current)], keep)
            compare, drop = self._pool_deletion(pool_id, index, current)
            compare.append(unchanged(mapping_key, mapping))
            if mapping is not None:
                prefix = network_hosts_prefix(load(mapping)["network_id"])
                bound, revision = self._kv.range(prefix, keys_only=True)
                if bound:  # Docker releases the pool before deleting the network: that deletion drops it
                    still_bound = present(bound[0].key)
                    unmoved = [unchanged(pool_key(pool_id), current), unchanged(mapping_key, mapping)]
                    return self._txn([*unmoved, still_bound], keep)
                compare.append(prefix_unchanged(prefix, revision))
            return self._txn(compare, drop)

        self._retry("releasing a pool", attempt)

    def _pool_deletion(self, pool_id: str, index: Item | None, current: Item | None) -> tuple[list, list]:
        """Compares and operations that delete a pool read as ``current`` and every address in it."""
        return self._pools_deletion({pool_id: current}, index)

    def _pools_deletion(self, pools: dict[str, Item | None], index: Item | None) -> tuple[list, list]:
        """As _pool_deletion for several pools (pool id -> as read) in one transaction: the pool index
        is written once (a transaction may not put one key twice)."""
        dropped = {k: v for k, v in (load(index).get("pools", {}) if index else {}).items() if k not in pools}
        compare = [unchanged(POOLS_INDEX, index), *(unchanged(pool_key(p), c) for p, c in pools.items())]
        ops: list[Any] = [Put(POOLS_INDEX, dump({"pools": dropped}))]
        for pool_id in pools:
            ops += [
                Delete(pool_key(pool_id)),
                Delete(cursor_key(pool_id)),
                Delete(address_prefix(pool_id), prefix=True),
                Delete(owner_prefix(pool_id), prefix=True),
                Delete(blocks_prefix(pool_id), prefix=True),
                Delete(claims_prefix(pool_id), prefix=True),
            ]
        return compare, ops

    # -- addresses ----------------------------------------------------------------------------------
    def _taken(self, pool_id: str, pool_revision: int, refresh: bool) -> set[int]:
        """The pool's reserved addresses as this process last listed them. Only a hint: the
        transaction is the real check, and a stale set costs one lost race per missing address."""
        with self._taken_lock:
            cached = self._taken_cache.get(pool_id)
        if (
            not refresh
            and cached is not None
            and cached[0] == pool_revision
            and time.monotonic() - cached[1] < TAKEN_CACHE_SECONDS
        ):
            return cached[2]
        items, _ = self._kv.range(address_prefix(pool_id), keys_only=True)
        taken = alloc.address_ints(i.key.rsplit("/", 1)[1] for i in items)
        with self._taken_lock:
            self._taken_cache[pool_id] = (pool_revision, time.monotonic(), taken)
        return taken

    def reserve_address(self, pool_id: str, owner: str, host_id: str, address: str | None = None) -> str:
        """Reserve an address of the pool for ``owner`` (a MAC address, or GATEWAY_OWNER) and return it
        as a bare IP ("10.0.0.5"). If ``owner`` already holds an address in the pool, that one is returned
        (idempotent; for the gateway this makes it the same on every host). With ``address`` set, that exact
        address: Conflict if another owner holds it, or if it is outside the subnet, the network or
        broadcast address. Without, the next free address of ip_range (or subnet), skipping network and
        broadcast addresses, round-robin after the last one handed out. Exhausted when full; NotFound
        for an unknown pool."""
        wanted = str(alloc.parse_address(address)) if address is not None else None
        owner_key = owner_prefix(pool_id) + owner
        listed = False  # whether this call has read the full address list already

        def attempt(n: int) -> str:
            nonlocal listed
            pool_kv, owner_kv, cursor_kv = self._kv.get(pool_key(pool_id), owner_key, cursor_key(pool_id))
            if pool_kv is None:
                raise NotFound(f"pool {pool_id} not found")
            pool, pool_revision = Pool.from_json(load(pool_kv)), pool_kv.create_revision
            if owner_kv is not None:  # a retry, or the gateway asked for again by another host
                held = load(owner_kv)["address"]
                if wanted is None or wanted == held:
                    return held
                if owner == GATEWAY_OWNER:
                    raise Conflict(
                        f"pool {pool_id} already has gateway {held}, not {wanted}: "
                        f"use --gateway {held}, or leave --gateway out"
                    )
                raise Conflict(f"{owner} already holds address {held} in pool {pool_id}, not {wanted}")
            if wanted is not None:
                candidate = str(alloc.check_requested_address(pool.subnet, wanted))
            else:
                after = load(cursor_kv).get("address") if cursor_kv else None
                refresh = n > 0 and n % 8 == 0  # losing race after race: others hold much we miss
                taken = self._taken(pool_id, pool_revision, refresh) | self._in_blocks(pool)
                listed = listed or refresh
                # First try: strict round-robin. After a lost race: a random one of the next few, so
                # that racing writers stop colliding on the same address.
                limit = 1 if n == 0 else 16
                try:
                    free = alloc.free_addresses(pool.subnet, pool.ip_range, taken, after, limit)
                except Exhausted:
                    if listed:
                        raise
                    listed = True  # addresses freed elsewhere are missing from a cached list
                    taken = self._taken(pool_id, pool_revision, refresh=True) | self._in_blocks(pool)
                    free = alloc.free_addresses(pool.subnet, pool.ip_range, taken, after, limit)
                candidate = str(random.choice(free))
            address_key = address_prefix(pool_id) + candidate
            success = [
                Put(address_key, dump({"owner": owner, "host_id": host_id})),
                Put(owner_key, dump({"address": candidate})),
            ]
            if wanted is None:
                success.append(Put(cursor_key(pool_id), dump({"address": candidate})))
            placed = self._block_compares(pool, candidate, host_id)  # may hand over to the block's holder
            ok = self._kv.txn(
                [
                    same_incarnation(pool_key(pool_id), pool_kv),
                    absent(address_key),
                    absent(owner_key),
                    *placed,
                ],
                success,
            )
            self._note_taken(pool_id, candidate, taken=True)  # ours now, or someone else's
            if ok:
                return candidate
            if wanted is None:
                return RETRY
            [held_by] = self._kv.get(address_key)
            holder = load(held_by).get("owner") if held_by else None
            if wanted is not None and holder == GATEWAY_OWNER:
                raise Conflict(
                    f"address {wanted} is the gateway of pool {pool_id}: it cannot be given to a container; "
                    "choose another address"
                )
            if wanted is not None and holder not in (None, owner):
                raise Conflict(f"address {wanted} is already in use in pool {pool_id}")
            return RETRY

        return self._retry(f"reserving an address in pool {pool_id}", attempt)

    def _in_blocks(self, pool: Pool) -> set[int]:
        """Addresses a pool-wide allocation skips: those of blocks hosts hold (block_policy.py)."""
        return set()

    def _block_compares(self, pool: Pool, address: str, host_id: str) -> list[Compare]:
        """What a pool-wide reservation of ``address`` compares about its block (block_policy.py)."""
        return []

    def _note_taken(self, pool_id: str, address: str, taken: bool) -> None:
        with self._taken_lock:
            cached = self._taken_cache.get(pool_id)
            if cached is not None:
                value = alloc.address_ints([address]).pop()
                if taken:
                    cached[2].add(value)
                else:
                    cached[2].discard(value)

    def release_address(self, pool_id: str, address: str, only_owner: str | None = None) -> None:
        """Free the address. Unknown pool or free address: no-op. The gateway is not freed here
        (it belongs to the pool and goes with it). With ``only_owner``, only while that owner holds it."""
        freed = str(alloc.parse_address(address))
        key = address_prefix(pool_id) + freed

        def attempt(_: int) -> None:
            [current] = self._kv.get(key)
            if current is None or load(current).get("owner") == GATEWAY_OWNER:
                return None  # the gateway goes with the pool
            if only_owner is not None and load(current)["owner"] != only_owner:
                return None
            owner_key = owner_prefix(pool_id) + load(current)["owner"]
            if self._txn([unchanged(key, current)], [Delete(key), Delete(owner_key)]) is RETRY:
                return RETRY
            self._note_taken(pool_id, freed, taken=False)
            return None

        self._retry(f"releasing address {address}", attempt)

    def adopt_address(self, pool_id: str, address: str, host_id: str, owner: str) -> bool:
        """Hand the address this host reserved under a request key (REQUEST_OWNER_PREFIX: Docker sent no
        MAC) to ``owner``, the endpoint's MAC, as if Docker had sent it: forget_host and Docker sync find
        an endpoint's address by its MAC. Returns whether ``owner`` holds the address now (False if it is
        free, the gateway, another owner's, or ``owner`` holds another address of the pool)."""
        keys = adoption_keys(pool_id, address, owner)

        def attempt(_: int) -> Any:
            holds, compares, ops = adoption(pool_id, address, host_id, owner, *self._kv.get(*keys))
            if not ops:
                return holds
            return RETRY if self._txn(compares, ops) is RETRY else True

        return self._retry(f"adopting address {address}", attempt)

    def list_addresses(self, pool_id: str) -> dict[str, str]:
        """address -> owner, for every reserved address of the pool (empty for an unknown pool)."""
        items, _ = self._kv.range(address_prefix(pool_id))
        return {i.key.rsplit("/", 1)[1]: load(i)["owner"] for i in items}


def adoption_keys(pool_id: str, address: str, owner: str) -> tuple[str, str]:
    """The keys adoption() reads: the address's and the new owner's."""
    return address_prefix(pool_id) + _bare(address), owner_prefix(pool_id) + owner


def _bare(address: str) -> str:
    return str(alloc.parse_address(address.split("/")[0]))


def adoption(
    pool_id: str, address: str, host_id: str, owner: str, current: Item | None, owner_kv: Item | None
) -> tuple[bool, list[Compare], list[Any]]:
    """From the items at adoption_keys(): whether ``owner`` holds the address once the returned compares
    and ops are committed (no ops: nothing to write, or not adoptable). See adopt_address."""
    held = load(current) if current is not None else {}
    if held.get("owner") == owner:
        return True, [], []  # a resent CreateEndpoint, or Docker sent the MAC
    if (
        current is None
        or not str(held.get("owner", "")).startswith(REQUEST_OWNER_PREFIX)
        or held.get("host_id") != host_id
        or owner_kv is not None
    ):
        return False, [], []
    key, owner_key = adoption_keys(pool_id, address, owner)
    ops = [
        Put(key, dump({"owner": owner, "host_id": host_id})),
        Put(owner_key, dump({"address": _bare(address)})),
        Delete(owner_prefix(pool_id) + held["owner"]),
    ]
    return True, [unchanged(key, current), absent(owner_key)], ops
