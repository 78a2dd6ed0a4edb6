"""pyoverlay benchmarks on a two-host lab: figures and ratios against baselines, from one run.

    sudo .venv/bin/python -m benchmarks.overlay [--trials 20] [--rounds 3] [--seconds 10] [--mtu 1500]

- throughput and RTT: benchmarks.datapath's three columns (pyoverlay, a hand-built veth + bridge + VXLAN
  path in the same containers, Docker's swarm overlay) on this lab, `--rounds` interleaved rounds;
- convergence: container started on host B -> first ping reply from a container on host A (p50, p99);
- control plane: `docker run --rm … true` on a pyoverlay network vs a user-defined bridge network, and
  the plugin's own share of each request type (p50/p99); with --baseline DIR, DIR's agents and this tree's
  take turns (benchmarks.docker_run);
- IPAM: 1,000 RequestAddress calls, 8 threads across 2 hosts' agents: rate, duplicates, and the cost of
  one allocation at 90 % pool fill vs 10 %.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import datapath, docker_run
from benchmarks.lab_helpers import pct, wait_network
from tests.lab import Lab, LabHost
from tests.plugin_client import PluginClient

SLEEP = ("sleep", "3600")


def convergence(lab: Lab, trials: int) -> dict[str, list[float]]:
    """Seconds from `docker run` issued on B until A's kernel has B's neighbour entry, and until a
    container on A gets its first ping reply (it retries as any client would: ARP, then ICMP)."""
    h1, h2 = lab.hosts
    h1.docker("run", "-d", "--name", "conv-a", "--network", "bench", lab.image, *SLEEP)
    times: dict[str, list[float]] = {"programmed": [], "ping": [], "docker run": []}
    for i in range(trials):
        target = f"10.60.1.{10 + i}"
        loop = f"until ping -c 1 -W 1 {target} >/dev/null 2>&1; do usleep 20000; done; echo ok"
        pinger = subprocess.Popen(
            [*docker_cmd(h1), "exec", "conv-a", "sh", "-c", loop], stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.5)
        programmed: list[float] = []
        (netns,) = h1.network_namespaces()  # the bench network's, on A
        watcher = threading.Thread(target=_wait_neighbour, args=(h1, netns, target, programmed))
        start = time.monotonic()
        watcher.start()
        h2.docker(
            "run", "-d", "--name", f"conv-b{i}", "--network", "bench", "--ip", target, lab.image, *SLEEP
        )
        times["docker run"].append(time.monotonic() - start)
        assert pinger.stdout is not None
        assert pinger.stdout.readline().strip() == "ok"
        times["ping"].append(time.monotonic() - start)
        pinger.wait()
        watcher.join()
        times["programmed"].append(programmed[0] - start)
        h2.docker("rm", "-f", f"conv-b{i}")
    h1.docker("rm", "-f", "conv-a")
    return times


def _wait_neighbour(h: LabHost, netns: str, target: str, found: list[float], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    query = ["nsenter", f"--net={netns}", "ip", "neigh", "show", "to", target, "nud", "permanent"]
    while time.monotonic() < deadline:
        if target in h.run(query).stdout:
            found.append(time.monotonic())
            return
        time.sleep(0.005)
    found.append(float("nan"))


def ipam(lab: Lab, total: int = 1000, threads: int = 8) -> dict[str, float]:
    clients = [PluginClient(str(h.agent_socket)) for h in lab.hosts]
    pool = clients[0].ok("IpamDriver.RequestPool", {"AddressSpace": "pyoverlay", "Pool": "10.61.0.0/21"})[
        "PoolID"
    ]
    clients[1].ok("IpamDriver.RequestPool", {"AddressSpace": "pyoverlay", "Pool": "10.61.0.0/21"})
    size = 2046  # a /21 less network and broadcast addresses

    def allocate(i: int) -> tuple[str, float]:
        mac = ":".join(f"{b:02x}" for b in (2, *uuid.uuid4().bytes[:5]))
        start = time.monotonic()
        answer = clients[i % 2].ok(
            "IpamDriver.RequestAddress",
            {"PoolID": pool, "Options": {"com.docker.network.endpoint.macaddress": mac}},
        )
        return answer["Address"], time.monotonic() - start

    def cost_at(fill: int, held: list[str]) -> float:
        while len(held) < fill:
            held.append(allocate(len(held))[0])
        samples = []
        for i in range(30):
            address, seconds = allocate(i)
            samples.append(seconds)
            clients[i % 2].ok("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": address.split("/")[0]})
        return statistics.median(samples)

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as workers:
        addresses = [a for a, _ in workers.map(allocate, range(total))]
    elapsed = time.monotonic() - start
    duplicates = len(addresses) - len(set(addresses))
    for i, address in enumerate(addresses):
        clients[i % 2].ok("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": address.split("/")[0]})
    held: list[str] = []
    at10 = cost_at(size // 10, held)
    at90 = cost_at(size * 9 // 10, held)
    for i, address in enumerate(held):
        clients[i % 2].ok("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": address.split("/")[0]})
    for client in clients:
        client.ok("IpamDriver.ReleasePool", {"PoolID": pool})
    return {"rate": total / elapsed, "duplicates": duplicates, "ms_at_10": at10 * 1e3, "ms_at_90": at90 * 1e3}


def docker_cmd(h: LabHost) -> list[str]:
    return ["/usr/bin/docker", "-H", h.docker_host]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput/RTT rounds")
    parser.add_argument("--seconds", type=int, default=10, help="iperf3 duration per measurement")
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--only", nargs="*", default=["throughput", "convergence", "control", "ipam"])
    parser.add_argument("--baseline", help="control: a checkout whose agents take turns with this tree's")
    args = parser.parse_args()
    with Lab(2, name="pyobench", mtu=args.mtu, etcd=True) as lab:
        lab.start_agents()
        h1, h2 = lab.hosts
        h1.create_network("bench", "--subnet", "10.60.0.0/16", "--ip-range", "10.60.0.0/24")
        wait_network(h2, "bench")
        print(f"lab: 2 hosts, underlay MTU {args.mtu}, etcd; {args.trials} trials\n")
        if "throughput" in args.only:
            datapath.print_results(datapath.measure(lab, args.rounds, args.seconds))
        if "convergence" in args.only:
            c = convergence(lab, args.trials)
            print("convergence (s from `docker run` issued on host B)")
            for name, values in c.items():
                print(f"  {name:<18} p50 {pct(values, 0.5):.3f}  p99 {pct(values, 0.99):.3f}")
        if "control" in args.only:
            h1.docker("network", "create", "bench-bridge")
            baseline = Path(args.baseline).resolve() if args.baseline else None
            runs = docker_run.compare(lab, h1, ("bench", "bench-bridge"), args.trials, baseline)
            print("control plane (docker run --rm … true on host A, medians; plugin shares on host A)")
            docker_run.report(runs, indent="  ")
        if "ipam" in args.only:
            r = ipam(lab)
            print("IPAM (1,000 RequestAddress, 8 threads across 2 hosts)")
            print(
                f"  rate {r['rate']:.0f}/s   duplicates {r['duplicates']:.0f}   "
                f"one allocation at 10% fill {r['ms_at_10']:.1f} ms, at 90% {r['ms_at_90']:.1f} ms "
                f"(ratio {r['ms_at_90'] / r['ms_at_10']:.2f})"
            )


if __name__ == "__main__":
    main()
