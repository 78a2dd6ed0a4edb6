"""pyoverlay benchmarks on a two-host lab: figures and ratios against baselines, from one run.

    sudo .venv/bin/python -m benchmarks.overlay [--trials 20] [--seconds 10] [--mtu 1500]

- throughput: iperf3, one TCP stream, container -> container across hosts over pyoverlay, vs a hand-built
  kernel VXLAN between the same two host namespaces (same MTU), vs the bare underlay;
- convergence: container started on host B -> first ping reply from a container on host A (p50, p99);
- control plane: `docker run --rm … true` on a pyoverlay network vs a user-defined bridge network, and
  the plugin's own share of each request type (p50/p99); with --baseline DIR, DIR's agents and this tree's
  take turns (benchmarks.docker_run);
- IPAM: 1,000 RequestAddress calls, 8 threads across 2 hosts' agents: rate, duplicates, and the cost of
  one allocation at 90 % pool fill vs 10 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import docker_run
from tests.lab import Lab, LabHost
from tests.plugin_client import PluginClient

SLEEP = ("sleep", "3600")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def iperf_gbps(client: list[str], server_ip: str, seconds: int) -> float:
    out = subprocess.run(
        [*client, "iperf3", "-J", "-c", server_ip, "-t", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def throughput(lab: Lab, seconds: int) -> dict[str, float]:
    h1, h2 = lab.hosts
    h2.docker("run", "-d", "--name", "tput-srv", "--network", "bench", lab.image, "iperf3", "-s")
    h1.docker("run", "-d", "--name", "tput-cli", "--network", "bench", lab.image, *SLEEP)
    server = ip_of(h2, "tput-srv", "bench")
    wait_ping(h1, "tput-cli", server)
    results = {"pyoverlay": iperf_gbps([*docker_cmd(h1), "exec", "tput-cli"], server, seconds)}
    # the same kernel VXLAN, hand-built between the two host namespaces, at the containers' MTU
    mtu = int(h1.docker("exec", "tput-cli", "cat", "/sys/class/net/eth0/mtu").stdout)
    for i, h in enumerate((h1, h2), start=1):
        peer = lab.hosts[2 - i].address
        h.run(
            [
                "ip",
                "link",
                "add",
                "bvx0",
                "mtu",
                str(mtu),
                "type",
                "vxlan",
                "id",
                "999",
                "local",
                h.address,
                "remote",
                peer,
                "dstport",
                "4790",
                "dev",
                "eth0",
            ]
        )
        h.run(["ip", "addr", "add", f"10.77.0.{i}/24", "dev", "bvx0"])
        h.run(["ip", "link", "set", "bvx0", "up"])
    server_proc = h2.popen(["iperf3", "-s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        results["hand-built VXLAN"] = iperf_gbps(h1.nsenter(), "10.77.0.2", seconds)
        results["bare underlay"] = iperf_gbps(h1.nsenter(), h2.address, seconds)
    finally:
        server_proc.terminate()
        server_proc.wait()
        for h in (h1, h2):
            h.run(["ip", "link", "del", "bvx0"], check=False)
    h1.docker("rm", "-f", "tput-cli")
    h2.docker("rm", "-f", "tput-srv")
    return results


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
        watcher = threading.Thread(target=_wait_neighbour, args=(h1, target, programmed))
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


def _wait_neighbour(h: LabHost, target: str, found: list[float], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target in h.run(["ip", "neigh", "show", "to", target, "nud", "permanent"]).stdout:
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


def ip_of(h: LabHost, container: str, network: str) -> str:
    out = h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
    return json.loads(out)[network]["IPAddress"]


def wait_ping(h: LabHost, container: str, target: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while h.docker("exec", container, "ping", "-c", "1", "-W", "1", target, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{container} cannot reach {target}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=10, help="iperf3 duration per measurement")
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--only", nargs="*", default=["throughput", "convergence", "control", "ipam"])
    parser.add_argument("--baseline", help="control: a checkout whose agents take turns with this tree's")
    args = parser.parse_args()
    with Lab(2, name="pyobench", mtu=args.mtu, etcd=True) as lab:
        lab.start_agents()
        h1, h2 = lab.hosts
        h1.create_network("bench", "--subnet", "10.60.0.0/16", "--ip-range", "10.60.0.0/24")
        deadline = time.monotonic() + 15
        while "bench" not in h2.docker("network", "ls", "--format", "{{.Name}}").stdout:
            assert time.monotonic() < deadline, "bench network did not reach h2"
            time.sleep(0.2)
        print(f"lab: 2 hosts, underlay MTU {args.mtu}, etcd; {args.trials} trials\n")
        if "throughput" in args.only:
            t = throughput(lab, args.seconds)
            print("throughput (iperf3, 1 TCP stream, Gbit/s)")
            for name, value in t.items():
                print(f"  {name:<18} {value:7.2f}   ratio to pyoverlay {value / t['pyoverlay']:.2f}")
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
