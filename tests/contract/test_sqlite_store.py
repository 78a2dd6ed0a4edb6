"""What only the embedded store has: its own bounded event log, and a file shared across a fork."""

from __future__ import annotations

import os

import pytest

from kvstore import Compacted, Endpoint, Network
from kvstore.sqlite_store import SqliteStore


def test_bounded_event_log_compacts(tmp_path) -> None:
    store = SqliteStore(str(tmp_path), event_log_size=100)
    net = store.create_network("h1", "dockA", Network("dockA", 0))
    _, _, start = store.snapshot()
    for i in range(300):
        store.put_endpoint(Endpoint(f"e{i}", net.network_id, "h1", "192.0.2.1", "02:00:00:00:00:01"))
    with pytest.raises(Compacted, match=f"revision {start} is compacted"):
        list(store.watch(start, timeout=1))
    _, _, now = store.snapshot()
    assert [e.key_id for e in store.watch(now - 9, timeout=0.1)] == [f"e{i}" for i in range(290, 300)]
    store.close()


def test_store_opened_before_a_fork_works_in_the_child(tmp_path) -> None:
    store = SqliteStore(str(tmp_path))
    store.create_network("h1", "dockA", Network("dockA", 0))
    pid = os.fork()
    if pid == 0:  # the child reconnects instead of sharing the parent's sqlite handle
        try:
            store.create_network("h1", "dockB", Network("dockB", 0))
            os._exit(0 if len(store.list_networks()) == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [n.network_id for n in store.list_networks()] == ["dockA", "dockB"]
    store.close()
