"""What only the etcd store has: compaction, a lost connection, leases, failover, lazy connecting."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvstore import Compacted, Endpoint, Host, Network, Store, StoreUnavailable
from kvstore.etcd_conn import EtcdConnection
from kvstore.kv_etcd import EtcdKV
from tests.etcd_server import EtcdServer, free_port
from tests.watching import Collector


def EtcdStore(endpoints: list[str], timeout: float = 5) -> Store:  # noqa: N802 - reads as a class
    return Store(EtcdKV(EtcdConnection(endpoints, timeout=timeout)))


@pytest.fixture
def shared(etcd_server: EtcdServer) -> Store:
    etcd_server.etcdctl("del", "--prefix", "/pyoverlay/")
    store = EtcdStore([etcd_server.endpoint])
    yield store
    store.close()


def watchers(server: EtcdServer) -> float:
    with urllib.request.urlopen(f"{server.endpoint}/metrics", timeout=5) as answer:
        found = re.search(rb"^etcd_debugging_mvcc_watcher_total (\S+)$", answer.read(), re.M)
    return float(found.group(1))


def raw_prefix(server: EtcdServer, prefix: str) -> dict[str, str]:
    lines = server.etcdctl("get", "--prefix", prefix).splitlines()
    return dict(zip(lines[::2], lines[1::2], strict=True))


def test_watch_from_a_compacted_revision(shared: Store, etcd_server: EtcdServer) -> None:
    net = shared.create_network("h1", "dockA", Network("dockA", 0))
    _, rev = shared.endpoints_at(net.network_id)
    for i in range(3):
        shared.put_endpoint(Endpoint(f"e{i}", net.network_id, "h1", "192.0.2.1", "02:00:00:00:00:01"))
    _, now = shared.endpoints_at(net.network_id)
    etcd_server.etcdctl("compact", str(now))
    started = time.monotonic()
    with pytest.raises(Compacted):
        shared.watch_endpoints(net.network_id, rev + 1, Collector())
    assert time.monotonic() - started < 2
    seen = Collector()
    watch = shared.watch_endpoints(net.network_id, now, seen)  # the compaction point is kept
    assert [e.key_id for e in seen.items(quiet=0.2)] == ["e2"]
    watch.cancel()


def test_cancelled_watches_leave_no_watch_or_thread_behind(shared: Store, etcd_server: EtcdServer) -> None:
    net = shared.create_network("h1", "dockA", Network("dockA", 0))
    _, rev = shared.networks_at()
    shared.watch_networks(rev, Collector()).cancel()  # warm up: the client's one watch thread exists
    threads, server_side = threading.active_count(), watchers(etcd_server)
    for _ in range(20):
        seen = Collector()
        watch = shared.watch_endpoints(net.network_id, rev, seen)
        shared.watch_networks(rev, Collector()).cancel()
        watch.cancel()
    deadline = time.monotonic() + 5
    while watchers(etcd_server) > server_side and time.monotonic() < deadline:
        time.sleep(0.1)
    assert watchers(etcd_server) <= server_side
    assert threading.active_count() <= threads


def test_lease_expiry_and_reregistration(shared: Store) -> None:
    shared.register_host(Host("h1", "192.0.2.1"), ttl=2)
    assert [h.host_id for h in shared.list_hosts()] == ["h1"]
    deadline = time.monotonic() + 10
    while shared.list_hosts() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert shared.list_hosts() == []
    shared.register_host(Host("h1", "192.0.2.1"), ttl=2)  # same ttl: the expired lease is re-granted
    assert [h.host_id for h in shared.list_hosts()] == ["h1"]


def test_constructor_does_not_connect_and_calls_fail_within_timeout() -> None:
    started = time.monotonic()
    store = EtcdStore(["http://192.0.2.1:2379"], timeout=1)  # TEST-NET-1: nothing answers
    assert time.monotonic() - started < 0.5
    with pytest.raises(StoreUnavailable, match=r"etcd at http://192\.0\.2\.1:2379 is unreachable"):
        store.list_networks()
    assert time.monotonic() - started < 3
    store.close()
    with pytest.raises(ValueError, match="not a URL"):
        EtcdStore(["ftp://x"])


def test_a_connect_whose_first_syn_is_lost_still_succeeds(etcd_server: EtcdServer) -> None:
    """The kernel resends a SYN after 1 s: a connect that needs it is slow, not failed (gRPC's connect
    deadline follows its reconnect settings; at 200 ms this failed with "connect() timed out")."""
    rule = ["OUTPUT", "-p", "tcp", "--dport", str(etcd_server.client_port), "--syn", "-j", "DROP"]
    subprocess.run(["iptables", "-w", "-I", *rule], check=True)
    healed = threading.Timer(0.5, subprocess.run, (["iptables", "-w", "-D", *rule],))
    healed.start()
    store = EtcdStore([etcd_server.endpoint])
    try:
        store.list_networks()  # the first call connects: its SYN is dropped, the one resent at 1 s is not
    finally:
        healed.join()
        subprocess.run(["iptables", "-w", "-D", *rule], capture_output=True)  # gone already, unless failed
        store.close()


def test_failover_to_the_next_endpoint(etcd_server: EtcdServer) -> None:
    etcd_server.etcdctl("del", "--prefix", "/pyoverlay/")
    store = EtcdStore([f"http://127.0.0.1:{free_port()}", etcd_server.endpoint])
    assert store.create_network("h1", "dockA", Network("dockA", 0)).network_id == "dockA"
    store.close()


def test_killed_etcd_is_unavailable_fast_and_leaves_nothing_half_written(fresh_etcd: EtcdServer) -> None:
    store = EtcdStore([fresh_etcd.endpoint], timeout=2)
    pool = store.request_pool("h1", "10.80.0.0/22", None, "10.0.0.0/8", 24)
    net = store.create_network("h1", "dockA", Network("dockA", 0, pool_id=pool.pool_id))
    seen = Collector()
    store.watch_networks(store.networks_at()[1] + 1, seen)
    owners = [f"02:00:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(600)]

    progress = threading.Semaphore(0)

    def reserve(chunk: list[str]) -> int:
        done = 0
        for owner in chunk:
            try:
                store.reserve_address(pool.pool_id, owner, "h1")
                done += 1
                progress.release()
            except StoreUnavailable:
                pass
        return done

    with ThreadPoolExecutor(6) as workers:
        futures = [workers.submit(reserve, owners[i::6]) for i in range(6)]
        for _ in range(50):  # kill etcd in the middle of the reservations
            assert progress.acquire(timeout=10)
        fresh_etcd.kill()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"etcd at {fresh_etcd.endpoint} is unreachable"):
            store.get_network(net.network_id)
        assert time.monotonic() - started < 2
        assert isinstance(seen.first(timeout=10), StoreUnavailable)
        reserved_before = sum(f.result() for f in futures)
    assert 0 < reserved_before < len(owners)

    fresh_etcd.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            store.list_networks()
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the store did not recover after etcd restarted"
            time.sleep(0.1)
    addresses = raw_prefix(fresh_etcd, f"/pyoverlay/v1/addresses/{pool.pool_id}/")
    owner_keys = raw_prefix(fresh_etcd, f"/pyoverlay/v1/owners/{pool.pool_id}/")
    assert len(addresses) == len(owner_keys) >= reserved_before  # each write made both keys or neither
    retried = [store.reserve_address(pool.pool_id, owner, "h1") for owner in owners]  # idempotent retries
    assert len(set(retried)) == len(owners)
    assert store.list_addresses(pool.pool_id) == dict(zip(retried, owners, strict=True))
    store.close()
