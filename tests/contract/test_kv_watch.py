"""The key-value primitive's contract (kvstore/kv.py): watches, the same for every implementation; then
what only one implementation has (etcd going away, SQLite shared by processes and reopened)."""

from __future__ import annotations

import threading
import time

import pytest

from kvstore.etcd_conn import EtcdConnection
from kvstore.kv import Change, Delete, KeyValue, Put
from kvstore.kv_etcd import EtcdKV
from kvstore.kv_sqlite import SqliteKV
from kvstore.model import Compacted, StoreUnavailable
from tests.contract.kv_fixtures import Backend, Sink, backend_fixture, sqlite_log_size_fixture  # noqa: F401
from tests.etcd_server import EtcdServer


def test_watch_from_a_revision_delivers_changes_in_order(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    backend.put(p + "k1", "a")
    second = backend.put(p + "k1", "b")
    assert kv.txn([], [Delete(p + "k1")])
    deleted = backend.revision()
    fourth = backend.put(p + "k2", "c")
    sink = Sink()
    watch = kv.watch(p, second, sink)
    try:
        assert sink.changes(3) == [
            Change(p + "k1", "b", second),
            Change(p + "k1", None, deleted),
            Change(p + "k2", "c", fourth),
        ]
        live = backend.put(p + "k1", "d")
        assert sink.changes(1) == [Change(p + "k1", "d", live)]
        sink.nothing()
    finally:
        watch.cancel()


def test_watch_from_range_revision_misses_nothing_repeats_nothing(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    backend.put(p + "a", "1")
    items, revision = kv.range(p)
    assert [i.key for i in items] == [p + "a"]
    sink = Sink()
    watch = kv.watch(p, revision + 1, sink)
    try:
        later = backend.put(p + "b", "2")
        assert kv.txn([], [Delete(p + "a")])
        assert sink.changes(2) == [Change(p + "b", "2", later), Change(p + "a", None, later + 1)]
        sink.nothing()
    finally:
        watch.cancel()


def test_several_watches_each_see_only_their_prefix(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    start = backend.revision() + 1
    sink_a, sink_b = Sink(), Sink()
    watches = [kv.watch(p + "a/", start, sink_a), kv.watch(p + "b/", start, sink_b)]
    try:
        revisions = {key: backend.put(p + key, key) for key in ("a", "a/1", "b/1", "a0", "ab/x", "b/2", "b")}
        assert sink_a.changes(1) == [Change(p + "a/1", "a/1", revisions["a/1"])]
        assert sink_b.changes(2) == [Change(p + k, k, revisions[k]) for k in ("b/1", "b/2")]
        sink_a.nothing()
        sink_b.nothing()
    finally:
        for watch in watches:
            watch.cancel()


def test_changes_of_one_transaction_share_one_revision(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    backend.put(p + "x", "old")
    backend.put(p + "d/1", "old")
    sink = Sink()
    watch = kv.watch(p, backend.revision() + 1, sink)
    try:
        ops = [Put(p + "a", "1"), Put(p + "b", "2"), Delete(p + "x"), Delete(p + "d/", prefix=True)]
        assert kv.txn([], ops)
        revision = backend.revision()
        changes = sink.changes(4)
        assert sorted(changes, key=lambda c: c.key) == [
            Change(p + "a", "1", revision),
            Change(p + "b", "2", revision),
            Change(p + "d/1", None, revision),
            Change(p + "x", None, revision),
        ]
        sink.nothing()
    finally:
        watch.cancel()


def test_cancel_stops_delivery_and_is_idempotent(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    start = backend.revision() + 1
    in_sink, cancelled = threading.Event(), threading.Event()
    late: list[object] = []
    sink_b = Sink()

    def blocking(batch: list[Change] | Exception) -> None:
        in_sink.set()
        cancelled.wait(2)  # hold the store's watch thread while B is cancelled

    def record(batch: list[Change] | Exception) -> None:
        if cancelled.is_set():
            late.append(batch)
        sink_b(batch)

    watch_a = kv.watch(p + "a/", start, blocking)
    watch_b = kv.watch(p + "b/", start, record)
    try:
        # one revision for both watches: B's changes may be read already while A's sink runs
        assert kv.txn([], [Put(p + "a/1", "1"), Put(p + "b/1", "1")])
        assert in_sink.wait(5)
        watch_b.cancel()
        cancelled.set()
        watch_b.cancel()
        backend.put(p + "b/2", "2")
        time.sleep(0.3)
        assert late == []
    finally:
        cancelled.set()
        watch_a.cancel()


def test_cancel_from_inside_the_sink(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    sink, returned = Sink(), threading.Event()
    holder: list = []

    def once(batch: list[Change] | Exception) -> None:
        sink(batch)
        holder[0].cancel()
        returned.set()

    holder.append(kv.watch(p, backend.revision() + 1, once))
    first = backend.put(p + "k", "1")
    assert sink.changes(1) == [Change(p + "k", "1", first)]
    assert returned.wait(2), "cancel() called by the sink did not return"
    backend.put(p + "k", "2")
    sink.nothing()
    # the store's watch thread carries on for other watches
    other = Sink()
    watch = kv.watch(p, backend.revision() + 1, other)
    third = backend.put(p + "k", "3")
    assert other.changes(1) == [Change(p + "k", "3", third)]
    watch.cancel()


@pytest.mark.parametrize("sqlite_log_size", [10_000])
def test_a_large_transaction_is_delivered_whole(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    keys = [f"{p}big/{i:04d}" for i in range(1100)]
    for i in range(0, len(keys), 100):  # etcd takes at most 128 operations in one transaction
        assert kv.txn([], [Put(key, "v") for key in keys[i : i + 100]])
    sink = Sink()
    watch = kv.watch(p, backend.revision() + 1, sink)
    try:
        assert kv.txn([], [Delete(p + "big/", prefix=True)])
        revision = backend.revision()
        changes = sink.changes(len(keys))
        assert sorted(changes, key=lambda c: c.key) == [Change(key, None, revision) for key in keys]
        sink.nothing()
    finally:
        watch.cancel()


def oldest_watchable(kv: KeyValue, prefix: str, low: int, high: int) -> int:
    """The lowest start revision in (low, high] a watch accepts, given it refuses ``low``."""
    while high - low > 1:
        middle = (low + high) // 2
        try:
            kv.watch(prefix, middle, Sink()).cancel()
            high = middle
        except Compacted:
            low = middle
    return high


def test_watch_from_a_compacted_revision(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    key = p + "k"
    first = backend.put(key, "0")
    for i in range(1, 300):
        assert kv.txn([], [Put(key, str(i))])
    last = first + 299
    assert kv.get(key)[0].mod_revision == last  # type: ignore[union-attr] - one revision per write
    oldest = backend.compact(first + 200)
    with pytest.raises(Compacted):
        kv.watch(p, first, Sink())
    if oldest is None:  # compacted by the store itself: find where
        oldest = oldest_watchable(kv, p, first, last)
    assert first < oldest <= last
    with pytest.raises(Compacted):
        kv.watch(p, oldest - 1, Sink())
    # from the compaction point itself: every change that is left, none missing
    sink = Sink()
    watch = kv.watch(p, oldest, sink)
    try:
        expected = [Change(key, str(r - first), r) for r in range(oldest, last + 1)]
        assert sink.changes(len(expected)) == expected
        sink.nothing()
    finally:
        watch.cancel()


def test_etcd_watch_reports_a_lost_connection(fresh_etcd: EtcdServer) -> None:
    kv = EtcdKV(EtcdConnection([fresh_etcd.endpoint]))
    try:
        sink = Sink()
        start = kv.range("/k/")[1] + 1
        watch = kv.watch("/k/", start, sink)
        assert kv.txn([], [Put("/k/a", "1")])
        assert sink.changes(1) == [Change("/k/a", "1", start)]
        fresh_etcd.kill()
        assert isinstance(sink.error(timeout=5), StoreUnavailable)
        with pytest.raises(StoreUnavailable):
            kv.watch("/k/", start, Sink())
        with pytest.raises(StoreUnavailable):
            kv.get("/k/a")
        watch.cancel()
        sink.nothing()  # delivered once
        fresh_etcd.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                again = Sink()
                kv.watch("/k/", start, again)
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert kv.txn([], [Put("/k/b", "2")])
        assert again.changes(2) == [Change("/k/a", "1", start), Change("/k/b", "2", start + 1)]
    finally:
        kv.close()


def test_sqlite_sees_another_process_write(tmp_path) -> None:
    ours, theirs = SqliteKV(str(tmp_path)), SqliteKV(str(tmp_path))
    try:
        sink = Sink()
        watch = ours.watch("/k/", ours.range("/k/")[1] + 1, sink)
        assert theirs.txn([], [Put("/k/a", "1")])
        written = theirs.get("/k/a")[0]
        assert written is not None
        assert sink.changes(1, timeout=3) == [Change("/k/a", "1", written.mod_revision)]
        assert ours.get("/k/a") == [written]
        watch.cancel()
    finally:
        ours.close()
        theirs.close()


def test_sqlite_survives_close_and_reopen(tmp_path) -> None:
    before = SqliteKV(str(tmp_path))
    assert before.txn([], [Put("/k/a", "1"), Put("/k/b", "2")])
    assert before.txn([], [Put("/k/a", "3")])
    items, revision = before.range("/k/")
    before.close()
    after = SqliteKV(str(tmp_path))
    try:
        assert after.range("/k/") == (items, revision)
        assert after.txn([], [Put("/k/c", "4")])
        sink = Sink()
        after.watch("/k/", revision - 1, sink)  # the change log survives too
        assert sink.changes(4) == [
            Change("/k/a", "1", revision - 1),
            Change("/k/b", "2", revision - 1),
            Change("/k/a", "3", revision),
            Change("/k/c", "4", revision + 1),
        ]
    finally:
        after.close()
