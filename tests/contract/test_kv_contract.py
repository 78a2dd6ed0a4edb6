"""The key-value primitive's contract (kvstore/kv.py): reads, transactions and leases, the same for every
implementation. Watches are in test_kv_watch.py."""

from __future__ import annotations

import dataclasses
import time

from kvstore.kv import Change, Compare, Delete, Item, Put, absent, prefix_unchanged, present
from tests.contract.kv_fixtures import Backend, Sink, backend_fixture, sqlite_log_size_fixture  # noqa: F401


def value_of(b: Backend, key: str) -> str | None:
    item = b.kv.get(key)[0]
    return None if item is None else item.value


def test_get_several_keys_at_once_absent_is_none(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    assert kv.get(p + "none") == [None]
    ra = backend.put(p + "a", "1")
    rb = backend.put(p + "b", "2")
    assert kv.get(p + "a", p + "missing", p + "b") == [
        Item(p + "a", "1", ra, ra, 1),
        None,
        Item(p + "b", "2", rb, rb, 1),
    ]


def test_revisions_and_versions(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    created = backend.put(p + "a", "1")
    other = backend.put(p + "b", "x")
    modified = backend.put(p + "a", "2")
    assert created < other < modified
    assert kv.get(p + "a") == [Item(p + "a", "2", created, modified, 2)]
    assert kv.txn([], [Delete(p + "a")])
    deleted = backend.revision()
    assert deleted > modified
    assert kv.get(p + "a") == [None]
    recreated = backend.put(p + "a", "3")
    assert recreated > deleted
    # a new incarnation: version starts again at 1, create revision is the new one
    assert kv.get(p + "a", p + "b") == [
        Item(p + "a", "3", recreated, recreated, 1),
        Item(p + "b", "x", other, other, 1),
    ]


def test_range_in_key_order_and_keys_only(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    for key in ("b", "a/1", "c", "a"):
        backend.put(p + key, "v-" + key)
    # just outside the prefix: the prefix without its slash, and the key range's end itself
    backend.put(p[:-1], "outside")
    last = backend.put(p[:-1] + "0", "outside")
    items, revision = kv.range(p)
    assert [(i.key, i.value) for i in items] == [(p + k, "v-" + k) for k in ("a", "a/1", "b", "c")]
    assert revision == last
    assert items == [i for i in kv.get(*(i.key for i in items)) if i is not None]
    bare, bare_revision = kv.range(p, keys_only=True)
    assert bare_revision == revision
    assert bare == [dataclasses.replace(i, value="") for i in items]
    assert kv.range(p + "none/") == ([], revision)


def test_compare_each_target_and_op(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    key = p + "k"
    created = backend.put(key, "m")
    modified = backend.put(key, "m")
    assert created < modified
    for target, actual in (("value", "m"), ("version", 2), ("create", created), ("mod", modified)):
        below, above = ("l", "n") if target == "value" else (actual - 1, actual + 1)  # type: ignore[operator]
        cases = {
            ("==", actual): True,
            ("==", above): False,
            ("!=", above): True,
            ("!=", actual): False,
            ("<", above): True,
            ("<", actual): False,
            (">", below): True,
            (">", actual): False,
        }
        for (op, value), holds in cases.items():
            case = f"{target} {op} {value}"
            assert kv.txn([Compare(key, target, op, value)], [Put(p + "case", case)]) is holds, case
            assert (value_of(backend, p + "case") == case) is holds, case


def test_compare_absent_key_and_several_compares(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    gone = p + "gone"
    for target in ("version", "create", "mod"):
        assert kv.txn([Compare(gone, target, "==", 0)], []), target
        assert not kv.txn([Compare(gone, target, ">", 0)], []), target
    # an absent key has no value: every value compare fails
    assert not kv.txn([Compare(gone, "value", "==", "")], [])
    assert not kv.txn([Compare(gone, "value", "!=", "x")], [])
    backend.put(p + "k", "v")
    assert kv.txn([present(p + "k"), absent(gone), Compare(p + "k", "value", "==", "v")], [])
    assert not kv.txn([present(p + "k"), present(gone)], [Put(p + "k", "changed")])
    assert value_of(backend, p + "k") == "v"


def test_failing_txn_writes_nothing_and_empty_ops_succeed(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    backend.put(p + "k", "1")
    backend.put(p + "z", "1")
    before = backend.revision()
    assert kv.txn([absent(p + "k")], [Put(p + "k", "2"), Put(p + "new", "x"), Delete(p + "z")]) is False
    assert kv.get(p + "k", p + "new", p + "z")[1] is None
    assert [value_of(backend, p + "k"), value_of(backend, p + "z")] == ["1", "1"]
    assert kv.txn([], []) is True
    assert kv.txn([present(p + "k")], []) is True
    assert kv.txn([absent(p + "k")], []) is False
    assert backend.revision() == before


def test_txn_puts_and_deletes_atomically(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    for key in ("a", "ab", "d/1", "d/2/x", "d", "e/1"):
        backend.put(p + key, "old")
    ops = [Put(p + "b", "1"), Put(p + "c", "2"), Delete(p + "a"), Delete(p + "d/", prefix=True)]
    assert kv.txn([present(p + "a")], ops) is True
    items, revision = kv.range(p)
    # Delete(key) takes that key only; Delete(prefix=True) takes what is under the prefix only
    assert [(i.key, i.value) for i in items] == [
        (p + "ab", "old"),
        (p + "b", "1"),
        (p + "c", "2"),
        (p + "d", "old"),
        (p + "e/1", "old"),
    ]
    assert {(i.create_revision, i.mod_revision) for i in items if i.value != "old"} == {(revision, revision)}


def test_deleting_absent_keys_is_fine(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    assert kv.txn([], [Delete(p + "nothing")]) is True
    assert kv.txn([], [Delete(p + "nothing/", prefix=True)]) is True
    assert kv.txn([absent(p + "nothing")], [Delete(p + "nothing"), Put(p + "k", "v")]) is True
    assert value_of(backend, p + "k") == "v"


def test_prefix_compares(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    d = p + "d/"
    start = backend.revision()
    assert kv.txn([prefix_unchanged(d, start)], []), "an empty prefix holds vacuously"
    backend.put(d + "0", "same")
    backend.put(d + "1", "same")
    read = backend.revision()
    assert not kv.txn([prefix_unchanged(d, start)], [Put(p + "flag", "x")]), "a put under it after start"
    assert value_of(backend, p + "flag") is None
    assert kv.txn([prefix_unchanged(d, read)], [])
    # keys next to the prefix are not under it
    backend.put(p + "d", "next")
    backend.put(p + "d0", "next")
    assert kv.txn([prefix_unchanged(d, read)], [])
    # every key under the prefix must satisfy the compare
    assert kv.txn(
        [Compare(d, "version", "==", 1, prefix=True), Compare(d, "value", "==", "same", prefix=True)], []
    )
    assert kv.txn(
        [Compare(d, "create", "<", read + 1, prefix=True), Compare(d, "mod", ">", start, prefix=True)], []
    )
    assert not kv.txn([Compare(d, "create", "==", read, prefix=True)], [])
    # deletions are not seen by prefix_unchanged
    assert kv.txn([], [Delete(d + "1")])
    assert kv.txn([prefix_unchanged(d, read)], [])
    backend.put(d + "0", "changed")
    assert not kv.txn([prefix_unchanged(d, read)], [])
    assert not kv.txn([Compare(d, "version", "==", 1, prefix=True)], [])
    assert not kv.txn([Compare(d, "value", "==", "same", prefix=True)], [])


def test_lease_keepalive_expiry_and_delete_event(backend: Backend) -> None:
    p, kv = backend.prefix, backend.kv
    lease = kv.grant(2)
    assert lease != 0
    assert kv.txn([], [Put(p + "leased", "v", lease=lease), Put(p + "kept", "v")])
    leased, kept = kv.get(p + "leased", p + "kept")
    assert leased is not None and leased.lease == lease
    assert kept is not None and kept.lease == 0
    sink = Sink()
    watch = kv.watch(p, backend.revision() + 1, sink)
    try:
        # refreshed past its first TTL, the lease and its key live on
        assert kv.keepalive(lease) is True
        time.sleep(1.2)
        assert kv.keepalive(lease) is True
        time.sleep(1.2)
        assert value_of(backend, p + "leased") == "v"
        # nothing but the expiry: the store deletes the key by itself and the watch sees it
        [change] = sink.changes(1, timeout=8)
        assert change == Change(p + "leased", None, change.revision)
        assert change.revision > leased.mod_revision
        sink.nothing()
    finally:
        watch.cancel()
    assert kv.get(p + "leased", p + "kept") == [None, kept]
    assert kv.keepalive(lease) is False
    # a new lease is another lease: the expired one stays expired
    fresh = kv.grant(2)
    assert fresh != lease
    assert kv.keepalive(lease) is False
    assert kv.keepalive(fresh) is True
