"""One host's way to the cluster store for the requests Docker sends it: allocation in the host's own
address blocks, and work while the store is away.

While the store answers, calls go through to it, and the records a request reads are copied to
``offline.db``. When a call finds the store away (or the heartbeat does), the host is *away* until its
store answers again: a request that can be served from what the host holds alone (an address of its
own blocks, an endpoint record of its own) is served, and its change journalled (offline.py); one that
cannot (a new network, a fixed address, a full set of blocks) fails at once with an error naming the
outage. ``publish`` writes the journal in order when the store is back, each change idempotently.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from . import blocks
from .host_blocks import HostBlocks
from .host_upkeep import HostUpkeep
from .model import (
    GATEWAY_OWNER,
    REQUEST_OWNER_PREFIX,
    Conflict,
    Endpoint,
    Network,
    NotFound,
    Pool,
    StoreError,
    StoreUnavailable,
)
from .offline import OfflineState
from .store import Store

log = logging.getLogger(__name__)


class HostStore(HostUpkeep):
    def __init__(self, store: Store, host_id: str, state_dir: str | None) -> None:
        self.store = store
        self.host_id = host_id
        self.offline = OfflineState(state_dir)
        self.blocks = HostBlocks(self.offline)
        self._away_since: float | None = None
        self._order = threading.RLock()  # journalled writes and publishing: the journal's order holds
        self.wanted = threading.Event()  # set when the host should claim a spare block soon (keep_blocks)
        self.on_away: Any = lambda: None  # called once when the host finds itself away
        self._orphans: dict[tuple[str, str, str], float] = {}  # (pool, address, owner) -> first seen
        self.conflicts = 0  # journalled reservations the store refused on publishing: 0 by construction
        self._held: set[str] | None = None  # addresses endpoint records hold, read once per publishing

    # -- away or not --------------------------------------------------------------------------------
    @property
    def away(self) -> bool:
        return self._away_since is not None

    def mark_away(self, exc: Exception | None = None) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()
            log.warning("store unreachable (%s): serving what this host can alone, journalling", exc)
            self.on_away()

    def _refusal(self, what: str) -> StoreUnavailable:
        since = time.monotonic() - (self._away_since or time.monotonic())
        return StoreUnavailable(f"etcd is unreachable from this host (for {since:.0f} s): {what}")

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A store call; a store found away marks the host away."""
        try:
            return fn(*args, **kwargs)
        except StoreUnavailable as exc:
            self.mark_away(exc)
            raise

    # -- reads with copies --------------------------------------------------------------------------
    def network_for(self, docker_network_id: str) -> Network:
        key = "networks/" + docker_network_id
        if not self.away:
            try:
                network = self._call(self.store.network_for, self.host_id, docker_network_id)
            except NotFound:
                self.offline.delete(key)
                raise
            except StoreUnavailable:
                pass
            else:
                self.offline.put(key, network.to_json())
                return network
        copy = self.offline.get(key)
        if copy is None:
            if self.away:  # not copied here: only the store knows (and may be back already)
                with contextlib.suppress(StoreUnavailable):
                    return self._call(self.store.network_for, self.host_id, docker_network_id)
            raise self._refusal(f"network {docker_network_id[:12]} is not known on this host without it")
        return Network.from_json(copy)

    def get_pool(self, pool_id: str, fresh: bool = False) -> Pool:
        """The pool, from this host's copy when it has one (what a request needs of it, its subnet,
        ranges and block size, never changes; its holders do): RequestAddress is then one round trip.
        ``fresh`` reads the store (the keeper does, and so does a pool not copied yet)."""
        key = "pools/" + pool_id
        copy = self.offline.get(key)
        if copy is not None and not fresh:
            return Pool.from_json(copy)
        try:
            pool = self._call(self.store.get_pool, pool_id)
        except NotFound:
            self.offline.delete(key)
            raise
        except StoreUnavailable:
            if copy is None:
                raise self._refusal(f"pool {pool_id} is not known on this host without it") from None
            return Pool.from_json(copy)
        self.offline.put(key, pool.to_json())
        return pool

    def remember_pool(self, pool: Pool) -> None:
        self.offline.put("pools/" + pool.pool_id, pool.to_json())

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        """This host's endpoints are copied when written here; while away, only they are known."""
        if not self.away and self.offline.pending:
            with contextlib.suppress(StoreUnavailable):
                self.publish()  # older changes first: the store's answer then includes them
        if not self.away:
            try:
                return self._call(self.store.get_endpoint, endpoint_id)
            except StoreUnavailable:
                pass
        copy = self.offline.get("endpoints/" + endpoint_id)
        if copy is None:
            raise NotFound(f"endpoint {endpoint_id} not found")
        return Endpoint.from_json(copy)

    # -- writes that can wait -----------------------------------------------------------------------
    def _write(self, op: dict[str, Any]) -> None:
        """Apply ``op`` now, or journal it while the store is away or older changes wait."""
        if not self.away and not self.offline.pending:
            try:
                self._call(self._apply, op)
                return
            except StoreUnavailable:
                pass  # a timed-out write may have committed: the journalled one is idempotent
        with self._order:
            self.offline.append(op)
        if not self.away:
            with contextlib.suppress(StoreUnavailable):  # kept: published when the store answers
                self.publish()

    def put_endpoint(
        self, endpoint: Endpoint, adopt_from_pool: str | None, adopt6_from_pool: str | None
    ) -> None:
        self.offline.put("endpoints/" + endpoint.endpoint_id, endpoint.to_json())
        for pool_id, ip in ((adopt_from_pool, endpoint.ip), (adopt6_from_pool, endpoint.ip6)):
            held_by = self.blocks.owner_of(pool_id, ip) if pool_id and ip else None
            if held_by is not None and held_by.startswith(REQUEST_OWNER_PREFIX):
                self.blocks.mark(pool_id, ip, endpoint.mac)  # type: ignore[arg-type]  # as adoption does
        op = {
            "op": "put_endpoint",
            "endpoint": endpoint.to_json(),
            "adopt": adopt_from_pool,
            "adopt6": adopt6_from_pool,
        }
        try:
            self._write(op)
        except NotFound:
            self.offline.delete("endpoints/" + endpoint.endpoint_id)
            raise

    def delete_endpoint(self, endpoint_id: str) -> None:
        self.offline.delete("endpoints/" + endpoint_id)
        self._write({"op": "delete_endpoint", "endpoint_id": endpoint_id})

    def release_address(self, pool_id: str, address: str) -> None:
        """Free the address; while away, once the store is back (a release Docker sent then is not
        lost, even if the agent restarts meanwhile)."""
        # No owner: the view's may lag the store's (an adoption a reload overtook); published later, it
        # frees from the owner read then, while no endpoint record holds the address.
        self._write({"op": "release", "pool_id": pool_id, "address": address})
        self.blocks.free(pool_id, address)

    # -- addresses ----------------------------------------------------------------------------------
    def reserve_address(self, pool: Pool, owner: str, address: str | None) -> str:
        if address is None and owner != GATEWAY_OWNER and pool.block_prefixlen:
            return self._reserve_in_blocks(pool, owner)
        with self.blocks.lock:  # a fixed address in this host's block: mark it before it is written
            if address and self.blocks.holds(pool.pool_id, address):
                if self._holder(pool.pool_id, address) not in (None, owner):
                    raise Conflict(f"address {address} is already in use in pool {pool.pool_id}")
                self.blocks.mark(pool.pool_id, address, owner, in_flight=True)
        try:  # tried even while away: the store may be back before the heartbeat has seen it
            return self._call(self.store.reserve_address, pool.pool_id, owner, self.host_id, address)
        except StoreError as exc:
            if address:
                self.blocks.free(pool.pool_id, address, owner)
            if not isinstance(exc, StoreUnavailable):
                raise
            what = "the gateway" if owner == GATEWAY_OWNER else "a fixed address (--ip)" if address else ""
            raise self._refusal(
                f"{what} is checked against every host's addresses there; start the container without "
                "--ip, or try again once etcd answers"
                if what
                else f"pool {pool.subnet} has no address blocks for this host to hand out alone"
            ) from exc
        finally:
            if address:
                self.blocks.settled(pool.pool_id, address)

    def _reserve_in_blocks(self, pool: Pool, owner: str, retried: bool = False) -> str:
        held = self.blocks.address_of(pool.pool_id, owner)
        if held is not None and (self.away or self.offline.pending):
            return held  # resent after a restart while away: the journal has its reservation already
        picked = self.blocks.pick(pool, owner)
        if picked is None and not self.away:
            with contextlib.suppress(StoreUnavailable):
                self._claim(pool)
            picked = self.blocks.pick(pool, owner)
        if picked is None:
            if self.away:
                raise self._refusal(
                    f"this host's address blocks of pool {pool.subnet} are full, and more need etcd"
                )
            return self._call(self.store.reserve_address, pool.pool_id, owner, self.host_id)  # borrow
        address, block, revision = picked
        try:
            return self._write_reservation(pool, owner, address, block, revision, retried)
        finally:
            self.blocks.settled(pool.pool_id, address)

    def _write_reservation(
        self, pool: Pool, owner: str, address: str, block: str, revision: int, retried: bool
    ) -> str:
        if self.blocks.spare(pool) < blocks.block_size(pool.subnet, pool.block_prefixlen):
            self.wanted.set()  # the spare is being used: the keeper claims another block soon
        op = {"op": "reserve", "pool_id": pool.pool_id, "block": block, "revision": revision}
        op.update(address=address, owner=owner)
        if self.away or self.offline.pending:
            self._write(op)
            return address
        try:
            got = self._call(
                self.store.reserve_in_block, pool.pool_id, block, revision, address, owner, self.host_id
            )
        except StoreUnavailable:
            self._write(op)  # the same address: if the timed-out write committed, this one is a no-op
            return address
        except Conflict:
            if retried:
                raise
            self.reload_blocks(pool.pool_id)  # the view missed something: look again, then retry once
            return self._reserve_in_blocks(pool, owner, retried=True)
        if got != address:  # a retried request that already held one
            self.blocks.free(pool.pool_id, address, owner)
            self.blocks.mark(pool.pool_id, got, owner)
        return got

    def _claim(self, pool: Pool) -> bool:
        claimed = self._call(self.store.claim_block, pool.pool_id, self.host_id)
        if claimed is None:
            return False
        block, revision = claimed
        self.blocks.add_block(
            pool.pool_id, block, revision, self._call(self.store.block_taken, pool.pool_id, block)
        )
        log.info("claimed block %s of pool %s", block, pool.pool_id)
        return True

    def release_pool(self, pool_id: str) -> None:
        self.blocks.drop_pool(pool_id)
        self.offline.delete("pools/" + pool_id)  # the same subnet may come back as another pool
        self._call(self.store.release_pool, self.host_id, pool_id)

    def release_pool_blocks(self, pool_id: str) -> None:
        self.blocks.drop_pool(pool_id)
        self._call(self.store.drop_host_blocks, self.host_id, pool_id)

    def _holder(self, pool_id: str, address: str) -> str | None:
        """Who holds an address of this host's blocks. The view's mark is checked against the store
        unless this host's own pick or journal explains it: an address granted to another host and
        released there since is still marked here (the view is a superset), and is free."""
        marked = self.blocks.owner_of(pool_id, address)
        if marked is None or self.blocks.in_flight(pool_id, address) or self.offline.pending:
            return marked
        current = self._call(self.store.holder_of, pool_id, address)
        if current is None:
            self.blocks.free(pool_id, address, marked)
        elif current != marked:
            self.blocks.mark(pool_id, address, current)
        return current

    # -- claims other hosts make on this host's blocks ----------------------------------------------
    def answer_claims(self, claims: list[tuple[str, dict, int]]) -> None:
        """Grant each claim on an address of this host's blocks that is free, refuse it if taken."""
        for address, claim, revision in claims:
            pool_id = claim.get("pool_id", "")
            if claim.get("refused") or self.blocks.holds(pool_id, address) is None:
                continue
            with self.blocks.lock:
                holder = self._holder(pool_id, address)
                if holder is not None:
                    reason = f"it is in use (held by {holder}) in block {claim.get('block')} of this pool"
                    self._call(self.store.refuse_claim, address, claim, revision, reason)
                    continue
                self.blocks.mark(pool_id, address, claim["owner"])
            if not self._call(self.store.grant_claim, address, claim, revision):
                self.blocks.free(pool_id, address, claim["owner"])  # asked again, or given up: look again
            else:
                log.info(
                    "granted %s of block %s to host %s", address, claim.get("block"), claim.get("host_id")
                )

    # -- when the store is back ---------------------------------------------------------------------
    def publish(self) -> int:
        """Write the journal to the store in order, and leave the away state; returns how many changes.
        Raises StoreUnavailable (still away) with the rest kept."""
        started = time.monotonic()
        with self._order:
            self._held = None
            entries = self.offline.journal()
            for seq, op in entries:
                try:
                    self._call(self._apply, op, True)
                except StoreUnavailable:
                    raise
                except StoreError as exc:  # the network went meanwhile, say: nothing to publish
                    log.warning("journalled %s not published: %s", op["op"], exc)
                self.offline.published(seq)
            was_away, self._away_since = self._away_since, None
        if entries:
            log.info(
                "published %d changes made while the store was away, in %.2f s",
                len(entries),
                time.monotonic() - started,
            )
        if was_away is not None or entries:
            self.reload_blocks()
        return len(entries)

    def _apply(self, op: dict[str, Any], journalled: bool = False) -> None:
        kind = op["op"]
        if kind == "put_endpoint":
            self.store.put_endpoint(Endpoint.from_json(op["endpoint"]), op.get("adopt"), op.get("adopt6"))
        elif kind == "delete_endpoint":
            self.store.delete_endpoint(op["endpoint_id"])
        elif kind == "reserve":
            got = self._reserve_published(op)
            if got != op["address"]:
                self.conflicts += 1
                log.error("owner %s holds %s, not %s as handed out here", op["owner"], got, op["address"])
        elif kind == "release" and journalled:
            self._release_published(op["pool_id"], op["address"])
        elif kind == "release":
            self.store.release_address(op["pool_id"], op["address"])

    def _reserve_published(self, op: dict[str, Any]) -> str:
        args = (op["pool_id"], op["block"], op["revision"], op["address"], op["owner"], self.host_id)
        try:
            return self.store.reserve_in_block(*args)
        except Conflict as exc:
            self.conflicts += 1
            log.error("address %s handed out while away could not be published: %s", op["address"], exc)
            return op["address"]

    def _release_published(self, pool_id: str, address: str) -> None:
        # An endpoint record still holding the address is one whose DeleteEndpoint did not get through
        # either: it goes with the record (Docker sync). Otherwise it is freed from the owner read now.
        if self._held is None:
            self._held = {ip for e in self.store.list_endpoints() for ip in (e.ip, e.ip6) if ip}
        if address in self._held:
            return
        owner = self.store.holder_of(pool_id, address)
        if owner is not None:
            self.store.release_address(pool_id, address, only_owner=owner)
