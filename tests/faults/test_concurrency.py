"""T1: many `docker run -d` at once across 2 hosts on one network (etcd): no duplicate address, no failure
but a clear "no free address" where the pool really runs out, nothing leaked once they are removed.

"At once": every run is submitted together to a pool of docker CLI processes, CONCURRENCY per host in
flight (16 each, 32 in all: on the lab's 2 cores more only queues inside the daemons and the agents' 8
request threads, and makes the machine thrash rather than race harder)."""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections import Counter

import pytest

from tests.faults import leaks
from tests.faults.conftest import count
from tests.lab.system import wait_until

pytestmark = [pytest.mark.lab, pytest.mark.faults]

CONCURRENCY = 16  # docker CLI processes in flight per host
EXHAUSTED = re.compile(r"pool \S+ has no free address")


def create_everywhere(lab, name: str, subnet: str) -> None:
    h1, *others = lab.hosts
    h1.create_network(name, "--subnet", subnet)
    for h in others:
        wait_until(
            lambda h=h: name in h.docker("network", "ls", "--format", "{{.Name}}").stdout.split(),
            30,
            f"{name} on {h.name}",
        )


def run_at_once(lab, network: str, runs: int, prefix: str) -> list[tuple[str, int, str, float]]:
    """``runs`` `docker run -d`, spread evenly over the hosts, all submitted together:
    (host, exit status, stderr, seconds) per run."""

    def one(h, i: int) -> tuple[str, int, str, float]:
        start = time.monotonic()
        args = ["run", "-d", "--name", f"{prefix}{i}", "--network", network, lab.image, "sleep", "3600"]
        proc = h.docker(*args, check=False, timeout=600)
        return h.name, proc.returncode, proc.stderr.strip(), time.monotonic() - start

    pools = {h.name: concurrent.futures.ThreadPoolExecutor(CONCURRENCY) for h in lab.hosts}
    try:
        futures = [
            pools[h.name].submit(one, h, i) for i in range(runs) for h in [lab.hosts[i % len(lab.hosts)]]
        ]
        return [f.result() for f in futures]
    finally:
        for pool in pools.values():
            pool.shutdown()


def remove_all(lab) -> None:
    """Every container of every host, removed in parallel chunks."""

    def rm(h, ids: list[str]) -> None:
        h.docker("rm", "-f", *ids, timeout=600)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = []
        for h in lab.hosts:
            ids = h.docker("ps", "-aq").stdout.split()
            jobs += [pool.submit(rm, h, ids[i : i + 25]) for i in range(0, len(ids), 25)]
        for job in jobs:
            job.result()


def reasons(results: list[tuple[str, int, str, float]]) -> Counter[str]:
    found: Counter[str] = Counter()
    for _, status, err, _ in results:
        if status != 0:
            found["pool exhausted" if EXHAUSTED.search(err) else err[-200:]] += 1
    return found


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)


@pytest.fixture
def lab2(make_lab):
    lab = make_lab(2, etcd=True)
    lab.start_agents()
    return lab


def test_runs_at_once_get_unique_addresses(lab2, figures):
    runs = count("t1_runs", full=500, ci=60)
    create_everywhere(lab2, "wide", "10.70.0.0/23")
    start = time.monotonic()
    results = run_at_once(lab2, "wide", runs, "w")
    wall = time.monotonic() - start
    endpoints = {}
    for h in lab2.hosts:
        endpoints.update(leaks.docker_endpoints(h))
    addresses = [e["ipv4"] for e in endpoints.values()]
    duplicates = len(addresses) - len(set(addresses))
    failed = reasons(results)
    figures(
        "T1",
        f"{runs} docker run -d at once, 2 hosts, one /23, {CONCURRENCY} in flight per host",
        runs=runs,
        failures=sum(failed.values()),
        failures_by_reason=dict(failed),
        duplicates=duplicates,
        wall_s=round(wall, 1),
        run_p50_s=percentile([r[3] for r in results], 0.5),
        run_p99_s=percentile([r[3] for r in results], 0.99),
    )
    assert not failed, failed
    assert duplicates == 0 and len(addresses) == runs
    remove_all(lab2)
    leaks.assert_no_leaks(lab2, timeout=60)


def test_a_pool_that_runs_out_refuses_exactly_the_excess(lab2, figures):
    # a /27: 32 addresses less network, broadcast and gateway
    free, excess = 29, count("t1_excess", full=16, ci=6)
    create_everywhere(lab2, "narrow", "10.71.0.0/27")
    results = run_at_once(lab2, "narrow", free + excess, "n")
    failed = reasons(results)
    endpoints = {}
    for h in lab2.hosts:
        endpoints.update(leaks.docker_endpoints(h))
    addresses = [e["ipv4"] for e in endpoints.values()]
    figures(
        "T1b",
        f"{free + excess} docker run -d at once on a /27 ({free} free addresses), 2 hosts",
        runs=free + excess,
        failures_by_reason=dict(failed),
        duplicates=len(addresses) - len(set(addresses)),
        message=next((r[2] for r in results if r[1] != 0), ""),
    )
    assert failed == {"pool exhausted": excess}, failed
    assert len(addresses) == len(set(addresses)) == free
    remove_all(lab2)
    leaks.assert_no_leaks(lab2, timeout=60)
