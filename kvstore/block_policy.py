"""Address blocks in the store: the cluster half of host-affine allocation (docs/kvstore.md, "Blocks").

A host claims a block of a pool (``blocks/<pool>/<block>``, by a transaction requiring it absent) and
from then on is the only one who decides which of its addresses are handed out: it allocates there
itself (kvstore/host_blocks.py), online with one transaction, and, while the store is away, from what it
knows alone. Anyone else who wants an address inside a held block (a fixed ``--ip``, or a host whose pool
has no free block left) asks the holder through ``claims/<pool>/<ip>`` and waits for its answer; a
pool-wide reservation of an address in no block requires that block still unclaimed. So no address is
ever handed out twice, whether the store is reachable or not.
"""

from __future__ import annotations

import random
import time
from typing import Any

from . import alloc, blocks
from .ipam import MAX_ATTEMPTS, RETRY, IpamPolicy
from .keys import (
    BLOCKS,
    CLAIMS,
    address_prefix,
    block_key,
    blocks_prefix,
    claim_key,
    dump,
    load,
    owner_prefix,
    pool_key,
    split_block_key,
)
from .kv import Compare, Delete, Item, Put, Watch, absent, same_incarnation, unchanged
from .model import Conflict, Exhausted, NotFound, Pool

ANSWER_WAIT = 5.0  # seconds a request waits for a block's holder to answer a claim


class ClaimBusy(Conflict):
    """Another host is asking for the same address right now."""


class BlockHeld(Exception):
    """The address is in a block another host holds: only that host may hand it out."""

    def __init__(self, block: str, item: Item) -> None:
        super().__init__(block)
        self.block, self.item = block, item


class BlockPolicy(IpamPolicy):
    # -- claiming and releasing ---------------------------------------------------------------------
    def claim_block(self, pool_id: str, host_id: str) -> tuple[str, int] | None:
        """Claim a free block of the pool for ``host_id``: (block, its create revision), or None when the
        pool has no blocks or no free one. NotFound for an unknown pool."""

        def attempt(n: int) -> Any:
            [pool_kv] = self._kv.get(pool_key(pool_id))
            if pool_kv is None:
                raise NotFound(f"pool {pool_id} not found")
            pool = Pool.from_json(load(pool_kv))
            if not pool.block_prefixlen:
                return None
            items, _ = self._kv.range(blocks_prefix(pool_id), keys_only=True)
            claimed = {split_block_key(i.key)[1] for i in items}
            # racing hosts spread over the next few free blocks after a lost race
            free = blocks.free_blocks(
                pool.subnet, pool.ip_range, pool.block_prefixlen, claimed, 1 if n == 0 else 8
            )
            if not free:
                return None
            block = random.choice(free)
            key = block_key(pool_id, block)
            compares = [same_incarnation(pool_key(pool_id), pool_kv), absent(key)]
            if not self._kv.txn(compares, [Put(key, dump({"host_id": host_id}))]):
                return RETRY
            [item] = self._kv.get(key)
            return (block, item.create_revision) if item is not None else RETRY

        return self._retry(f"claiming a block of pool {pool_id}", attempt)

    def block_taken(self, pool_id: str, block: str) -> dict[str, str]:
        """address -> owner for every reserved address inside ``block``."""
        return {a: o for a, o in self.list_addresses(pool_id).items() if blocks.address_in(a, block)}

    def host_blocks(self, host_id: str) -> dict[str, dict[str, int]]:
        """pool_id -> {block: create revision} of every block ``host_id`` holds."""
        items, _ = self._kv.range(BLOCKS)
        held: dict[str, dict[str, int]] = {}
        for item in items:
            if load(item).get("host_id") == host_id:
                pool_id, block = split_block_key(item.key)
                held.setdefault(pool_id, {})[block] = item.create_revision
        return held

    def release_block(self, pool_id: str, block: str, revision: int) -> None:
        """Give the block back (as claimed at ``revision``); its reserved addresses stay reserved."""
        self._kv.txn(
            [Compare(block_key(pool_id, block), "create", "==", revision)],
            [Delete(block_key(pool_id, block))],
        )

    def drop_host_blocks(self, host_id: str, pool_id: str | None = None) -> int:
        """Release every block ``host_id`` holds (in one pool, or in all) and its pending claims; returns
        how many blocks. For a host that left a pool, or that an operator forgot."""
        held = self.host_blocks(host_id)
        dropped = 0
        for pool, owned in held.items():
            if pool_id is None or pool == pool_id:
                for block, revision in owned.items():
                    self.release_block(pool, block, revision)
                    dropped += 1
        claims, _ = self._kv.range(CLAIMS)
        mine = [c for c in claims if load(c).get("host_id") == host_id]
        for claim in mine:
            if pool_id is None or load(claim).get("pool_id") == pool_id:
                self._kv.txn([unchanged(claim.key, claim)], [Delete(claim.key)])
        return dropped

    def release_pool(self, host_id: str, pool_id: str) -> None:
        self.drop_host_blocks(host_id, pool_id)  # a host leaving a pool hands out nothing there any more
        super().release_pool(host_id, pool_id)

    # -- one host allocating in its own block -------------------------------------------------------
    def reserve_in_block(
        self, pool_id: str, block: str, revision: int, address: str, owner: str, host_id: str
    ) -> str:
        """Reserve ``address`` of the block ``host_id`` holds (claimed at ``revision``) for ``owner``: one
        transaction when all goes well. Returns the address ``owner`` holds (another one if it held one
        already: a retried request); Conflict if the address is taken (the holder's view missed it) or
        the block is no longer this host's."""
        address_key, owner_key = address_prefix(pool_id) + address, owner_prefix(pool_id) + owner
        held_block = Compare(block_key(pool_id, block), "create", "==", revision)
        ops = [
            Put(address_key, dump({"owner": owner, "host_id": host_id})),
            Put(owner_key, dump({"address": address})),
        ]
        if self._kv.txn([held_block, absent(address_key), absent(owner_key)], ops):
            self._note_taken(pool_id, address, taken=True)
            return address
        owner_kv, address_kv, block_kv = self._kv.get(owner_key, address_key, block_key(pool_id, block))
        if owner_kv is not None:
            return load(owner_kv)["address"]
        if block_kv is None or block_kv.create_revision != revision:
            raise Conflict(f"block {block} of pool {pool_id} is no longer held by host {host_id}")
        raise Conflict(f"address {address} in block {block} is already reserved")

    # -- pool-wide reservations meet the blocks (hooks of IpamPolicy.reserve_address) -----------------
    def _in_blocks(self, pool: Pool) -> set[int]:
        if not pool.block_prefixlen:
            return set()
        items, _ = self._kv.range(blocks_prefix(pool.pool_id), keys_only=True)
        skipped: set[int] = set()
        for item in items:
            net = alloc.ip_network(split_block_key(item.key)[1])
            skipped.update(range(int(net.network_address), int(net.broadcast_address) + 1))
        return skipped

    def _block_compares(self, pool: Pool, address: str, host_id: str) -> list[Compare]:
        if not pool.block_prefixlen or not blocks.in_range(
            blocks.block_of(address, pool.block_prefixlen), pool.subnet, pool.ip_range
        ):
            return []
        block = blocks.block_of(address, pool.block_prefixlen)
        key = block_key(pool.pool_id, block)
        [item] = self._kv.get(key)
        if item is None:
            return [absent(key)]  # a host claiming it meanwhile lists the address after its claim
        if load(item).get("host_id") == host_id:
            return [same_incarnation(key, item)]  # ours: the caller (HostBlocks) has marked it taken
        raise BlockHeld(block, item)

    def reserve_address(self, pool_id: str, owner: str, host_id: str, address: str | None = None) -> str:
        """IpamPolicy.reserve_address, where an address inside a block another host holds is asked of
        that host (ask_holder). Without ``address``, an address in no held block first; when every
        block is held, one borrowed from a holder."""
        try:
            return super().reserve_address(pool_id, owner, host_id, address)
        except BlockHeld as held:
            wanted = str(alloc.parse_address(address)) if address else None
            return self.ask_holder(pool_id, held.block, held.item, wanted or "", owner, host_id)
        except Exhausted:
            if address is not None:
                raise
            return self._borrow(pool_id, owner, host_id)

    def _borrow(self, pool_id: str, owner: str, host_id: str) -> str:
        pool = self.get_pool(pool_id)
        if not pool.block_prefixlen:
            raise Exhausted(f"pool {pool.subnet} has no free address")
        taken = alloc.address_ints(self.list_addresses(pool_id))
        items, _ = self._kv.range(blocks_prefix(pool_id))
        others = [i for i in items if load(i).get("host_id") != host_id]
        candidates = [
            (item, str(address))
            for item in others
            for address in blocks.free_in_blocks(
                pool.subnet, [split_block_key(item.key)[1]], taken, limit=256
            )
        ]
        random.shuffle(candidates)  # borrowers asking at once spread over the free addresses
        for item, address in candidates[:MAX_ATTEMPTS]:
            try:
                return self.ask_holder(pool_id, split_block_key(item.key)[1], item, address, owner, host_id)
            except ClaimBusy:
                continue  # another borrower asks for this one: the next
            except Conflict as exc:
                if "in use" not in str(exc):
                    raise  # unanswered: the holder is away
        raise Exhausted(f"pool {pool.subnet} has no free address")

    # -- claims: asking a block's holder, and answering ---------------------------------------------
    def ask_holder(
        self, pool_id: str, block: str, block_item: Item, address: str, owner: str, host_id: str
    ) -> str:
        """Ask the host holding ``block`` for ``address`` on behalf of ``owner`` and wait up to ANSWER_WAIT
        for its answer. Returns the address; Conflict if it is refused, or unanswered (its holder may be
        away from the store: handing it out here could then give it twice)."""
        holder = load(block_item).get("host_id", "?")
        key, address_key = claim_key(pool_id, address), address_prefix(pool_id) + address
        claim = {"pool_id": pool_id, "owner": owner, "host_id": host_id, "block": block}
        asked = self._kv.txn(
            [absent(key), absent(address_key), same_incarnation(block_key(pool_id, block), block_item)],
            [Put(key, dump(claim))],
        )
        deadline, pause = time.monotonic() + ANSWER_WAIT, 0.01
        while True:
            current, reserved = self._kv.get(key, address_key)
            if reserved is not None:
                if load(reserved).get("owner") == owner:
                    return address
                raise Conflict(f"address {address} is already in use in pool {pool_id}")
            if current is not None and load(current).get("refused"):
                self._kv.txn([unchanged(key, current)], [Delete(key)])
                raise Conflict(f"address {address}: {load(current)['refused']}")
            if current is None or not asked and load(current).get("owner") != owner:
                if current is not None:
                    raise ClaimBusy(f"address {address} is being asked for by another host; try again")
                return self.reserve_address(pool_id, owner, host_id, address)  # the block went meanwhile
            if time.monotonic() > deadline:
                if self._kv.txn([unchanged(key, current)], [Delete(key)]):
                    raise Conflict(
                        f"address {address} is in block {block}, which host {holder} holds and hands out; "
                        f"it did not answer within {ANSWER_WAIT:.0f} s (it may be away from etcd, and could "
                        "have given the address out itself): try again later, or choose an address outside "
                        "the blocks hosts hold (etcdctl get --prefix /pyoverlay/v1/blocks/)"
                    )
                continue  # answered just now
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def claims_at(self) -> tuple[list[tuple[str, dict, int]], int]:
        """Every pending claim as (address, claim, mod revision), and the revision read at."""
        items, revision = self._kv.range(CLAIMS)
        return [(i.key.rsplit("/", 1)[1], load(i), i.mod_revision) for i in items], revision

    def watch_claims(self, start_revision: int, sink: Any) -> Watch:
        """Events of kind "claim": key_id the address, record the claim (None once answered)."""
        return self._watch(CLAIMS, start_revision, sink, "claim", lambda data: data)  # type: ignore[attr-defined]

    def grant_claim(self, address: str, claim: dict, revision: int) -> bool:
        """Reserve ``address`` for the claim (read at mod ``revision``) and drop it, in one transaction.
        False if the claim changed or went, or the address or owner is taken meanwhile."""
        pool_id, owner = claim["pool_id"], claim["owner"]
        key, address_key, owner_key = (
            claim_key(pool_id, address),
            address_prefix(pool_id) + address,
            owner_prefix(pool_id) + owner,
        )
        ops = [
            Put(address_key, dump({"owner": owner, "host_id": claim["host_id"]})),
            Put(owner_key, dump({"address": address})),
            Delete(key),
        ]
        return self._kv.txn(
            [Compare(key, "mod", "==", revision), absent(address_key), absent(owner_key)], ops
        )

    def refuse_claim(self, address: str, claim: dict, revision: int, reason: str) -> None:
        key = claim_key(claim["pool_id"], address)
        self._kv.txn([Compare(key, "mod", "==", revision)], [Put(key, dump({**claim, "refused": reason}))])
