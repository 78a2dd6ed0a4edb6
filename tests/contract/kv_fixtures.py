"""The ``backend`` fixture of the key-value contract (kvstore/kv.py): each implementation, with a prefix
of the test's own, and ``Sink``, which collects what a watch delivers."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from kvstore.etcd_conn import EtcdConnection
from kvstore.kv import Change, Delete, KeyValue, Put
from kvstore.kv_etcd import EtcdKV
from kvstore.kv_sqlite import SqliteKV


@dataclass
class Backend:
    name: str
    kv: KeyValue
    prefix: str  # the test's own: every key it uses starts with it
    # Makes revisions below ``revision`` unwatchable and returns the oldest watchable revision, or None
    # where the store compacts on its own (SQLite's bounded change log).
    compact: Callable[[int], int | None]

    def put(self, key: str, value: str) -> int:
        """Write ``key`` alone and return the revision of the write."""
        assert self.kv.txn([], [Put(key, value)])
        item = self.kv.get(key)[0]
        assert item is not None and item.value == value
        return item.mod_revision

    def revision(self) -> int:
        return self.kv.range(self.prefix)[1]


@pytest.fixture(name="sqlite_log_size")
def sqlite_log_size_fixture() -> int:
    """SQLite's change log: small, so that the compaction test (300 writes) forces one. A test that
    writes more overrides it with ``@pytest.mark.parametrize("sqlite_log_size", [...])``."""
    return 100


# Named apart from the fixtures, so that a test module importing them may take ``backend`` as argument.
@pytest.fixture(name="backend", params=["etcd", "sqlite-file", "sqlite-memory"])
def backend_fixture(request: pytest.FixtureRequest, tmp_path, sqlite_log_size: int) -> Iterator[Backend]:
    prefix = f"/kvtest/{uuid.uuid4().hex[:12]}/"
    kv: KeyValue
    if request.param == "etcd":
        server = request.getfixturevalue("etcd_server")
        kv = EtcdKV(EtcdConnection([server.endpoint]))

        def compact(revision: int) -> int | None:
            server.etcdctl("compact", str(revision))
            return revision

    else:
        kv = SqliteKV(str(tmp_path) if request.param == "sqlite-file" else None, sqlite_log_size)

        def compact(revision: int) -> int | None:
            return None

    yield Backend(request.param, kv, prefix, compact)
    if request.param == "etcd":
        kv.txn([], [Delete(prefix, prefix=True)])
    kv.close()


class Sink:
    """A watch sink that queues every call; the test waits for them with a timeout."""

    def __init__(self) -> None:
        self.calls: queue.Queue[list[Change] | Exception] = queue.Queue()

    def __call__(self, batch: list[Change] | Exception) -> None:
        self.calls.put(batch)

    def changes(self, count: int, timeout: float = 5.0) -> list[Change]:
        """The next ``count`` changes (more if the last batch holds more); fails on an error."""
        got: list[Change] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                batch = self.calls.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{len(got)} of {count} changes within {timeout}s: {got[-5:]}") from None
            assert not isinstance(batch, Exception), f"watch failed after {got}: {batch!r}"
            got += batch
        return got

    def error(self, timeout: float = 5.0) -> Exception:
        try:
            batch = self.calls.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no error delivered within {timeout}s") from None
        assert isinstance(batch, Exception), f"changes instead of an error: {batch}"
        return batch

    def nothing(self, seconds: float = 0.3) -> None:
        try:
            batch = self.calls.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected delivery: {batch!r}")
