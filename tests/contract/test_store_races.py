"""Concurrency half of the Store contract: two "hosts" (store instances) with eight threads each."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network

from kvstore import Network, Store

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
