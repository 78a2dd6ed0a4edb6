"""Address blocks in the store (kvstore/block_policy.py), on every key-value primitive: claims never give
one block twice, pool-wide reservations stay out of held blocks, and an address in a held block is only
ever handed out by its holder (asked through a claim)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvstore import Conflict, Exhausted, Store, block_policy, blocks

SUBNET = "10.60.0.0/24"


def pool_for(store: Store, *hosts: str, subnet: str = SUBNET, block_size: int = 28) -> str:
    for host in hosts:
        pool = store.request_pool(host, subnet, None, "10.0.0.0/8", 24, block_size)
    return pool.pool_id


@contextlib.contextmanager
def holder_answering(store: Store, grant: bool = True, reason: str = "in use") -> Iterator[list[str]]:
    """A thread answering every claim as a block's holder would (HostStore.answer_claims): yields the
    addresses it answered."""
    stop, answered = threading.Event(), []

    def run() -> None:
        while not stop.is_set():
            claims, _ = store.claims_at()
            for address, claim, revision in claims:
                if claim.get("refused"):
                    continue
                if grant:
                    store.grant_claim(address, claim, revision)
                else:
                    store.refuse_claim(address, claim, revision, reason)
                answered.append(address)
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(timeout=5)


def test_a_new_pool_is_split_into_blocks_once_for_every_host(make_store) -> None:
    a, b = make_store(), make_store()
    pool_id = pool_for(a, "h0")
    b.request_pool("h1", SUBNET, None, "10.0.0.0/8", 24, 26)  # another host's setting: the pool's holds
    assert b.get_pool(pool_id).block_prefixlen == 28
    assert a.request_pool("h0", "10.61.0.0/24", None, "10.0.0.0/8", 24, 0).block_prefixlen == 0


def test_racing_claims_never_give_one_block_twice(make_store) -> None:
    stores = [make_store(), make_store()]
    pool_id = pool_for(stores[0], "h0", "h1")

    def claim_all(n: int) -> list[str]:
        store, host, got = stores[n % 2], f"h{n % 2}", []
        while (claimed := store.claim_block(pool_id, host)) is not None:
            got.append(claimed[0])
        return got

    with ThreadPoolExecutor(8) as pool:
        claimed = [b for chunk in pool.map(claim_all, range(8)) for b in chunk]
    assert sorted(claimed) == sorted(blocks.free_blocks(SUBNET, None, 28, set(), limit=64))  # 16, once each
    held = {h: stores[0].host_blocks(h).get(pool_id, {}) for h in ("h0", "h1")}
    assert sum(len(v) for v in held.values()) == 16 and not set(held["h0"]) & set(held["h1"])


def test_pool_wide_reservations_stay_out_of_held_blocks_and_a_later_claim_sees_them(make_store) -> None:
    store = make_store()
    pool_id = pool_for(store, "h0", "h1")
    assert store.reserve_address(pool_id, "gateway", "h0") == "10.60.0.1"  # before any block: the first
    block, _ = store.claim_block(pool_id, "h0")
    assert block == "10.60.0.0/28"
    assert store.reserve_address(pool_id, "02:00:00:00:00:01", "h1") == "10.60.0.16"  # not in h0's block
    assert store.reserve_address(pool_id, "02:00:00:00:00:02", "h1", "10.60.0.40") == "10.60.0.40"
    second, _ = store.claim_block(pool_id, "h1")  # the lowest free block: 10.60.0.16/28, taken .16 in it
    assert second == "10.60.0.16/28"
    assert store.block_taken(pool_id, second) == {"10.60.0.16": "02:00:00:00:00:01"}
    assert store.block_taken(pool_id, block) == {"10.60.0.1": "gateway"}


def test_an_address_in_another_hosts_block_is_granted_by_it(make_store) -> None:
    holder, asker = make_store(), make_store()
    pool_id = pool_for(holder, "h0", "h1")
    block, revision = holder.claim_block(pool_id, "h0")
    with holder_answering(holder) as answered:
        assert asker.reserve_address(pool_id, "02:00:00:00:00:09", "h1", "10.60.0.9") == "10.60.0.9"
    assert answered == ["10.60.0.9"]
    assert holder.list_addresses(pool_id) == {"10.60.0.9": "02:00:00:00:00:09"}
    assert holder.claims_at()[0] == []  # the grant dropped the claim
    # the holder's own reservation of it now fails: its view must have marked it (HostStore does)
    with pytest.raises(Conflict, match="already reserved"):
        holder.reserve_in_block(pool_id, block, revision, "10.60.0.9", "02:00:00:00:00:01", "h0")


def test_a_refused_or_unanswered_claim_fails_clearly_and_leaves_nothing(make_store, monkeypatch) -> None:
    holder, asker = make_store(), make_store()
    pool_id = pool_for(holder, "h0", "h1")
    holder.claim_block(pool_id, "h0")
    with (
        holder_answering(holder, grant=False, reason="it is in use"),
        pytest.raises(Conflict, match="in use"),
    ):
        asker.reserve_address(pool_id, "02:00:00:00:00:09", "h1", "10.60.0.9")
    monkeypatch.setattr(block_policy, "ANSWER_WAIT", 0.5)
    started = time.monotonic()
    with pytest.raises(Conflict, match="host h0 holds.*did not answer.*away from etcd"):
        asker.reserve_address(pool_id, "02:00:00:00:00:09", "h1", "10.60.0.9")
    assert time.monotonic() - started < 5
    assert holder.claims_at()[0] == [] and holder.list_addresses(pool_id) == {}


def test_a_host_borrows_from_a_holder_when_every_block_is_held(make_store) -> None:
    holder, borrower = make_store(), make_store()
    pool_id = pool_for(holder, "h0", "h1", subnet="10.62.0.0/28")  # 4 blocks of 4
    assert holder.get_pool(pool_id).block_prefixlen == 30
    while holder.claim_block(pool_id, "h0") is not None:
        pass
    assert borrower.claim_block(pool_id, "h1") is None
    with holder_answering(holder):
        got = borrower.reserve_address(pool_id, "02:00:00:00:00:09", "h1")
    assert holder.list_addresses(pool_id) == {got: "02:00:00:00:00:09"}
    assert got in {str(a) for a in blocks.free_in_blocks("10.62.0.0/28", ["10.62.0.0/30"], set(), 3)} | {
        f"10.62.0.{n}" for n in range(4, 15)
    }


def test_a_pool_full_of_addresses_is_exhausted_not_asked(make_store) -> None:
    store = make_store()
    pool_id = pool_for(store, "h0", subnet="10.63.0.0/29", block_size=0)  # no blocks
    for n in range(6):
        store.reserve_address(pool_id, f"02:00:00:00:00:{n:02x}", "h0")
    with pytest.raises(Exhausted):
        store.reserve_address(pool_id, "02:00:00:00:00:ff", "h0")


def test_blocks_go_with_their_host_and_with_their_pool(make_store) -> None:
    store = make_store()
    pool_id = pool_for(store, "h0", "h1")
    store.claim_block(pool_id, "h0")
    store.claim_block(pool_id, "h1")
    store.forget_host("h0")
    assert store.host_blocks("h0") == {} and len(store.host_blocks("h1")[pool_id]) == 1
    assert not store.knows_host("h0")
    store.release_pool("h1", pool_id)  # the last holder: the pool goes, and with it every block
    assert store.host_blocks("h1") == {}
    with pytest.raises(Exception, match="not found"):
        store.claim_block(pool_id, "h1")


def test_a_block_reclaimed_by_another_host_refuses_its_old_holders_reservation(make_store) -> None:
    old, new = make_store(), make_store()
    pool_id = pool_for(old, "h0", "h1")
    block, revision = old.claim_block(pool_id, "h0")
    old.release_block(pool_id, block, revision)
    assert new.claim_block(pool_id, "h1")[0] == block
    with pytest.raises(Conflict, match="no longer held by host h0"):
        old.reserve_in_block(pool_id, block, revision, "10.60.0.5", "02:00:00:00:00:05", "h0")


def test_borrowers_asking_at_once_spread_over_the_free_addresses(make_store) -> None:
    holder, borrower = make_store(), make_store()
    pool_id = pool_for(holder, "h0", "h1", subnet="10.62.0.0/27")  # 4 blocks of 8, every one held by h0
    while holder.claim_block(pool_id, "h0") is not None:
        pass
    with holder_answering(holder), ThreadPoolExecutor(8) as pool:
        got = list(
            pool.map(lambda n: borrower.reserve_address(pool_id, f"02:00:00:00:01:{n:02x}", "h1"), range(8))
        )
    assert len(set(got)) == 8
