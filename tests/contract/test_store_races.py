"""Concurrency half of the Store contract: two "hosts" (store instances) with eight threads each."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from ipaddress import IPv4Network
from typing import Any

from kvstore import GATEWAY_OWNER, Endpoint, Network, Store

THREADS = 8


def run_on_two_hosts(make_store, work) -> list:
    """``work(store, host_id, worker)`` on 2 x THREADS threads; their results, in no particular order."""
    stores = [make_store(), make_store()]
    with ThreadPoolExecutor(2 * THREADS) as pool:
        futures = [pool.submit(work, stores[i % 2], f"h{i % 2}", i) for i in range(2 * THREADS)]
        return [f.result() for f in futures]


def test_racing_address_reservations_never_duplicate(make_store) -> None:
    setup = make_store()
    p = setup.request_pool("h0", "10.50.0.0/23", None, "10.0.0.0/8", 24)
    setup.request_pool("h1", "10.50.0.0/23", None, "10.0.0.0/8", 24)
    per_worker = 25  # 16 x 25 = 400 addresses out of 510

    def work(store: Store, host: str, worker: int) -> list[tuple[str, str]]:
        got = []
        for n in range(per_worker):
            owner = f"02:00:00:00:{worker:02x}:{n:02x}"
            got.append((owner, store.reserve_address(p.pool_id, owner, host)))
        return got

    started = time.monotonic()
    results = [pair for chunk in run_on_two_hosts(make_store, work) for pair in chunk]
    elapsed = time.monotonic() - started
    addresses = [a for _, a in results]
    assert len(addresses) == 400 == len(set(addresses))
    assert setup.list_addresses(p.pool_id) == {a: o for o, a in results}
    assert elapsed < 60, f"400 reservations took {elapsed:.1f}s"


def test_racing_default_pools_never_overlap(make_store) -> None:
    def work(store: Store, host: str, worker: int) -> list[str]:
        return [store.request_pool(host, None, None, "10.60.0.0/16", 24).subnet for _ in range(3)]

    subnets = [s for chunk in run_on_two_hosts(make_store, work) for s in chunk]
    nets = sorted(IPv4Network(s) for s in subnets)
    assert len(nets) == 48
    assert not any(x.overlaps(y) for x, y in zip(nets, nets[1:], strict=False))


def test_racing_creates_of_one_pool_network_agree(make_store) -> None:
    setup = make_store()
    p = setup.request_pool("h0", "10.70.0.0/24", None, "10.0.0.0/8", 24)

    def work(store: Store, host: str, worker: int) -> tuple[str, int]:
        net = store.create_network(host, f"dock-{host}", Network(f"dock-{host}", 0, pool_id=p.pool_id))
        return net.network_id, net.vni

    assert len(set(run_on_two_hosts(make_store, work))) == 1
    assert len(setup.list_networks()) == 1


def on_two_threads(*calls: Callable[[], Any]) -> list:
    """Run the calls at the same moment, one thread each; their results in order."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(run, c) for c in calls]]


def test_racing_deletes_of_one_network_delete_it_once(make_store) -> None:
    a, b = make_store(), make_store()
    for n in range(20):
        stale = n % 2 == 1  # each host has an endpoint its daemon forgot: each sees the other's
        a.create_network("h0", f"d0-{n}", Network(f"net{n}", 0))
        b.create_network("h1", f"d1-{n}", Network(f"net{n}", 0))
        if stale:
            a.put_endpoint(Endpoint(f"e0-{n}", f"net{n}", "h0", "192.0.2.1", "02:00:00:00:00:01"))
            b.put_endpoint(Endpoint(f"e1-{n}", f"net{n}", "h1", "192.0.2.2", "02:00:00:00:00:02"))
        results = on_two_threads(
            partial(a.delete_network, "h0", f"d0-{n}"),
            partial(b.delete_network, "h1", f"d1-{n}"),
        )
        assert sorted(results) == [False, True], (n, results)
        assert a.list_networks() == [] and a.list_endpoints() == []
        assert a.left_networks("h0") == set() == a.left_networks("h1")
        assert a.bindings("h0") == {} == a.bindings("h1")


def test_racing_release_pool_and_delete_network_leave_no_pool(make_store) -> None:
    a, b = make_store(), make_store()
    for n in range(20):
        p = b.request_pool("h1", f"10.91.{n}.0/24", None, "10.0.0.0/8", 24)  # held by host 1 only
        a.create_network("h0", f"d0-{n}", Network(f"d0-{n}", 0, pool_id=p.pool_id))
        b.create_network("h1", f"d1-{n}", Network(f"d1-{n}", 0, pool_id=p.pool_id))
        on_two_threads(partial(b.release_pool, "h1", p.pool_id), partial(a.delete_network, "h0", f"d0-{n}"))
        assert a.list_pools() == [], n  # whichever went first, the other took the pool along


def test_renaming_never_resurrects_a_deleted_endpoint(make_store) -> None:
    a, b = make_store(), make_store()
    a.create_network("h0", "dockA", Network("dockA", 0))
    for n in range(30):
        a.put_endpoint(Endpoint(f"e{n}", "dockA", "h0", "192.0.2.1", "02:00:00:00:00:01"))
        on_two_threads(partial(b.set_endpoint_name, f"e{n}", "web"), partial(a.delete_endpoint, f"e{n}"))
        assert a.list_endpoints() == [], n


def test_forgetting_a_host_while_another_allocates(make_store) -> None:
    setup = make_store()
    p = setup.request_pool("h0", "10.90.0.0/24", None, "10.0.0.0/8", 24)
    setup.request_pool("h1", "10.90.0.0/24", None, "10.0.0.0/8", 24)
    gw = setup.reserve_address(p.pool_id, GATEWAY_OWNER, "h0")
    setup.create_network("h0", "dockA", Network("dockA", 0, pool_id=p.pool_id))
    setup.create_network("h1", "dockB", Network("dockB", 0, pool_id=p.pool_id))
    for i in range(30):  # host 1's containers
        mac = f"02:00:00:00:01:{i:02x}"
        address = setup.reserve_address(p.pool_id, mac, "h1")
        setup.put_endpoint(Endpoint(f"e{i}", "dockA", "h1", "192.0.2.2", mac, f"{address}/24"))
    a, b = make_store(), make_store()
    owners = [f"02:00:00:00:00:{i:02x}" for i in range(60)]

    def allocate() -> dict[str, str]:
        return {a.reserve_address(p.pool_id, owner, "h0"): owner for owner in owners}

    got, removed = on_two_threads(allocate, lambda: b.forget_host("h1"))
    assert removed == 30 and len(got) == 60
    assert setup.list_addresses(p.pool_id) == {gw: GATEWAY_OWNER, **got}
    assert setup.list_endpoints() == []
    assert setup.get_pool(p.pool_id).holders == ("h0",)
    assert setup.bindings("h1") == {} and [n.network_id for n in setup.list_networks()] == ["dockA"]
