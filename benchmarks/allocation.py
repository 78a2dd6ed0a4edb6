"""What an address allocation costs in normal operation, with address blocks (each host allocating in its
own) against without them (every host through the whole pool, as before issue 13), in the same run:

    .venv/bin/python -m benchmarks.allocation [--rounds 400] [--threads 8]

A real etcd (started here), two hosts (two HostStores, each with its own etcd connection), one /16 pool
per mode (BLOCK_SIZE 28, and 0). Each round is a container's life as the IPAM sees it: RequestAddress
(no MAC, as Docker sends it), then ReleaseAddress. Printed per mode: the p50/p99 of RequestAddress one at
a time, the etcd round trips per allocation (get, range, txn), and allocations per second with --threads
per host at once on both hosts; then the ratios blocks / no blocks. Rounds alternate between the modes
so that drift on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from kvstore import HostStore, Store
from kvstore.etcd_conn import EtcdConnection
from kvstore.kv_etcd import EtcdKV
from tests.etcd_server import EtcdServer


class CountingKV(EtcdKV):
    """EtcdKV counting its round trips by kind."""

    def __init__(self, conn: EtcdConnection) -> None:
        super().__init__(conn)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.calls[kind] += 1

    def get(self, *keys):  # type: ignore[no-untyped-def]
        self._count("get")
        return super().get(*keys)

    def range(self, prefix, keys_only=False):  # type: ignore[no-untyped-def]
        self._count("range")
        return super().range(prefix, keys_only)

    def txn(self, compares, ops):  # type: ignore[no-untyped-def]
        self._count("txn")
        return super().txn(compares, ops)


def open_host(endpoint: str, host_id: str, state: str) -> tuple[HostStore, CountingKV]:
    kv = CountingKV(EtcdConnection([endpoint]))
    return HostStore(Store(kv), host_id, f"{state}/{host_id}"), kv


def one_life(host: HostStore, pool_id: str) -> float:
    pool = host.get_pool(pool_id)
    started = time.perf_counter()
    address = host.reserve_address(pool, "request-" + uuid.uuid4().hex[:16], None)
    took = time.perf_counter() - started
    host.release_address(pool_id, address)
    return took


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 1 else values[0] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with EtcdServer() as etcd, tempfile.TemporaryDirectory() as state:
        hosts = [open_host(etcd.endpoint, f"h{n}", state) for n in range(2)]
        pools = {}
        for mode, (subnet, size) in {
            "blocks": ("10.70.0.0/16", 28),
            "no blocks": ("10.71.0.0/16", 0),
        }.items():
            for host, _ in hosts:
                pool = host.store.request_pool(host.host_id, subnet, None, "10.0.0.0/8", 24, size)
            hosts[0][0].reserve_address(pool, "gateway", None)
            pools[mode] = pool.pool_id
        for host, _ in hosts:  # a block ready, as the agent's keeper has it
            host._claim(host.get_pool(pools["blocks"]))
        latency: dict[str, list[float]] = {mode: [] for mode in pools}
        trips: dict[str, Counter[str]] = {mode: Counter() for mode in pools}
        for n in range(args.rounds):
            for mode, pool_id in pools.items():
                host, kv = hosts[n % 2]
                before = Counter(kv.calls)
                latency[mode].append(one_life(host, pool_id))
                trips[mode] += Counter(kv.calls) - before
        throughput: dict[str, float] = {}
        for mode, pool_id in pools.items():
            per_thread = max(1, args.rounds // (2 * args.threads))

            def work(n: int, pool_id: str = pool_id, per_thread: int = per_thread) -> None:
                for _ in range(per_thread):
                    one_life(hosts[n % 2][0], pool_id)

            started = time.perf_counter()
            with ThreadPoolExecutor(2 * args.threads) as pool:
                list(pool.map(work, range(2 * args.threads)))
            throughput[mode] = 2 * args.threads * per_thread / (time.perf_counter() - started)
        print(f"{args.rounds} container lives per mode, 2 hosts, etcd 3.4 on this machine")
        print(f"{'mode':<10} {'p50 ms':>8} {'p99 ms':>8} {'trips/life (get range txn)':>28} {'lives/s':>9}")
        for mode in pools:
            t = trips[mode]
            per = " ".join(f"{t[k] / args.rounds:.2f}" for k in ("get", "range", "txn"))
            print(
                f"{mode:<10} {pct(latency[mode], 50):8.2f} {pct(latency[mode], 99):8.2f} {per:>28} "
                f"{throughput[mode]:9.0f}"
            )
        b, o = "blocks", "no blocks"
        print(
            f"ratio blocks / no blocks: RequestAddress p50 {pct(latency[b], 50) / pct(latency[o], 50):.2f}x, "
            f"p99 {pct(latency[b], 99) / pct(latency[o], 99):.2f}x, "
            f"throughput {throughput[b] / throughput[o]:.2f}x"
        )
        for host, _ in hosts:
            host.store.close()


if __name__ == "__main__":
    main()
