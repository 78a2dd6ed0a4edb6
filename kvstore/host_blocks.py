"""One host's view of the address blocks it holds: which addresses of them are taken, kept on disk so
that it can hand out addresses alone while the store is away (block_policy.py says why that is safe).

The view is a superset of the truth: an address is marked taken before its reservation is written, and
only this host writes reservations in its blocks (its own, and the claims it grants). An address freed
elsewhere (forget_host, a fixed address released on another host) stays marked until the next reload.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from . import alloc, blocks
from .model import Pool
from .offline import OfflineState

COPY = "blocks/"  # OfflineState key: blocks/<pool_id> -> {"blocks": {block: revision}, "taken": {ip: owner}}


@dataclass
class PoolBlocks:
    blocks: dict[str, int] = field(default_factory=dict)  # block -> create revision of its claim
    taken: dict[str, str] = field(default_factory=dict)  # address -> owner, addresses of these blocks
    empty_since: dict[str, float] = field(default_factory=dict)  # block -> monotonic time seen empty


class HostBlocks:
    def __init__(self, offline: OfflineState) -> None:
        self._offline = offline
        self._lock = threading.RLock()
        self._pools: dict[str, PoolBlocks] = {}
        # marked, not yet written to the store nor journalled: a reload from the store must keep them
        self._inflight: dict[tuple[str, str], str] = {}
        # every mark numbered: a reload keeps the marks made after its listing began (see since())
        self._seq = 0
        self._marked: dict[tuple[str, str], tuple[int, str]] = {}
        for key, value in offline.items(COPY):
            self._pools[key[len(COPY) :]] = PoolBlocks(dict(value["blocks"]), dict(value["taken"]))

    @property
    def lock(self) -> threading.RLock:
        """Held across a decision and its marking (granting a claim, a fixed address in a block)."""
        return self._lock

    def _save(self, pool_id: str) -> None:
        pool = self._pools.get(pool_id)
        if pool is None or not pool.blocks:
            self._pools.pop(pool_id, None)
            self._offline.delete(COPY + pool_id)
        else:
            self._offline.put(COPY + pool_id, {"blocks": pool.blocks, "taken": pool.taken})

    # -- what the store says ------------------------------------------------------------------------
    def since(self) -> int:
        """Where the marks stand: take it before listing the store, and pass it to replace()."""
        with self._lock:
            return self._seq

    def _note(self, pool_id: str, address: str, owner: str) -> None:
        self._seq += 1
        self._marked[(pool_id, address)] = (self._seq, owner)

    def replace(self, pool_id: str, held: dict[str, int], taken: dict[str, str], since: int = -1) -> None:
        """The pool's blocks and their reserved addresses as the store lists them now (plus what this
        host reserved that the store has not got yet: the caller adds its journal's reservations)."""
        with self._lock:
            recent = {a: o for (p, a), (n, o) in self._marked.items() if p == pool_id and n > since}
            self._marked = {k: v for k, v in self._marked.items() if k[0] != pool_id or v[0] > since}
            taken = {**taken, **recent, **{a: o for (p, a), o in self._inflight.items() if p == pool_id}}
            self._pools[pool_id] = PoolBlocks(
                dict(held), {a: o for a, o in taken.items() if _within(a, held)}
            )
            self._save(pool_id)

    def add_block(self, pool_id: str, block: str, revision: int, taken: dict[str, str]) -> None:
        with self._lock:
            pool = self._pools.setdefault(pool_id, PoolBlocks())
            pool.blocks[block] = revision
            pool.taken.update({a: o for a, o in taken.items() if blocks.address_in(a, block)})
            self._save(pool_id)

    def drop_block(self, pool_id: str, block: str) -> None:
        with self._lock:
            pool = self._pools.get(pool_id)
            if pool is not None and pool.blocks.pop(block, None) is not None:
                pool.taken = {a: o for a, o in pool.taken.items() if not blocks.address_in(a, block)}
                pool.empty_since.pop(block, None)
                self._save(pool_id)

    def drop_pool(self, pool_id: str) -> None:
        with self._lock:
            self._pools.pop(pool_id, None)
            self._save(pool_id)

    def pool_ids(self) -> list[str]:
        with self._lock:
            return list(self._pools)

    def held(self, pool_id: str) -> dict[str, int]:
        with self._lock:
            pool = self._pools.get(pool_id)
            return dict(pool.blocks) if pool else {}

    # -- allocating ---------------------------------------------------------------------------------
    def pick(self, pool: Pool, owner: str) -> tuple[str, str, int] | None:
        """A free address of this host's blocks, marked taken by ``owner``: (address, block, revision), or
        None when they are full (or there are none)."""
        with self._lock:
            mine = self._pools.get(pool.pool_id)
            if mine is None or not mine.blocks:
                return None
            free = blocks.free_in_blocks(pool.subnet, mine.blocks, alloc.address_ints(mine.taken), limit=1)
            if not free:
                return None
            address = str(free[0])
            block = blocks.block_of(address, pool.block_prefixlen)
            mine.taken[address] = owner
            mine.empty_since.pop(block, None)
            self._inflight[(pool.pool_id, address)] = owner
            self._note(pool.pool_id, address, owner)
            self._save(pool.pool_id)
            return address, block, mine.blocks[block]

    def in_flight(self, pool_id: str, address: str) -> bool:
        with self._lock:
            return (pool_id, address) in self._inflight

    def settled(self, pool_id: str, address: str) -> None:
        """A picked address is written to the store or journalled (or given up): a reload may drop it."""
        with self._lock:
            self._inflight.pop((pool_id, address), None)

    def holds(self, pool_id: str, address: str) -> tuple[str, int] | None:
        """(block, revision) if ``address`` is in a block this host holds."""
        with self._lock:
            pool = self._pools.get(pool_id)
            for block, revision in pool.blocks.items() if pool else ():
                if blocks.address_in(address, block):
                    return block, revision
            return None

    def address_of(self, pool_id: str, owner: str) -> str | None:
        """The address ``owner`` holds in this host's blocks (a resent request's), or None."""
        with self._lock:
            pool = self._pools.get(pool_id)
            return next((a for a, o in pool.taken.items() if o == owner), None) if pool else None

    def owner_of(self, pool_id: str, address: str) -> str | None:
        with self._lock:
            pool = self._pools.get(pool_id)
            return pool.taken.get(address) if pool else None

    def mark(self, pool_id: str, address: str, owner: str, in_flight: bool = False) -> bool:
        """Mark an address of this host's blocks taken (``in_flight``: until settled(), as pick() does);
        False if it is not in them."""
        with self._lock:
            if self.holds(pool_id, address) is None:
                return False
            self._pools[pool_id].taken[address] = owner
            self._note(pool_id, address, owner)
            if in_flight:
                self._inflight[(pool_id, address)] = owner
            self._save(pool_id)
            return True

    def free(self, pool_id: str, address: str, owner: str | None = None) -> None:
        """Unmark (only while ``owner`` holds it, when given)."""
        with self._lock:
            pool = self._pools.get(pool_id)
            if pool is None or address not in pool.taken or owner not in (None, pool.taken[address]):
                return
            del pool.taken[address]
            self._save(pool_id)

    def spare(self, pool: Pool) -> int:
        """How many addresses this host could still hand out alone in the pool."""
        with self._lock:
            mine = self._pools.get(pool.pool_id)
            if mine is None:
                return 0
            usable = sum(blocks.block_usable(b, pool.subnet) for b in mine.blocks)
            return usable - len(mine.taken)

    def idle_blocks(self, pool: Pool, idle: float) -> list[tuple[str, int]]:
        """Blocks empty for ``idle`` seconds that can go while a whole block's worth stays free."""
        now = time.monotonic()
        with self._lock:
            mine = self._pools.get(pool.pool_id)
            if mine is None:
                return []
            used = {blocks.block_of(a, pool.block_prefixlen) for a in mine.taken}
            for block in mine.blocks:
                if block in used:
                    mine.empty_since.pop(block, None)
                else:
                    mine.empty_since.setdefault(block, now)
            size = blocks.block_size(pool.subnet, pool.block_prefixlen)
            spare, going = self.spare(pool), []
            for block, since in sorted(mine.empty_since.items()):
                if now - since >= idle and spare - size >= size:
                    going.append((block, mine.blocks[block]))
                    spare -= size
            return going


def _within(address: str, held: dict[str, int]) -> bool:
    return any(blocks.address_in(address, block) for block in held)
