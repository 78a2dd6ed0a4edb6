"""Container <-> container across two lab hosts: pyoverlay vs a hand-built path vs Docker's own overlay.

    sudo .venv/bin/python -m benchmarks.datapath [--rounds 7] [--seconds 5] [--pings 100] [--engine 28]

Three columns from one run, measured in interleaved rounds (the order rotates every round), medians
over rounds, so that the noise of a shared machine hits every column alike:

- pyoverlay: two containers on a pyoverlay network, one on each host;
- hand-built: a veth + Linux bridge + kernel VXLAN path built by hand in each host's namespace (same
  iptables state: dockerd's rules, br_netfilter on) whose container end is a second interface in the
  SAME two containers: the same processes and namespaces as pyoverlay, only the path differs;
- docker overlay: Docker's built-in overlay driver in swarm mode (data port 4791), one container on
  each host.

Throughput: iperf3, one TCP stream, the host's binary run in each container's network namespace
(nsenter), client and server alike. RTT: busybox ping (the host's), per-packet `time=` values: the
far end's kernel answers the echo, so no user-space server's wake-up adds noise to the samples.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.lab_helpers import ContainerNetns, ip_of, pct, wait_network
from tests.lab import Lab, LabHost

COLUMNS = ("pyoverlay", "hand-built", "docker overlay")
SLEEP = ("sleep", "infinity")
IPERF_PORT = "5202"
PYO_NET, PYO_SUBNET = "dpbench", "10.62.0.0/24"
DOV_NET, DOV_SUBNET = "dov", "10.79.0.0/24"
HAND_PREFIX = "10.77.0"  # the hand-built path's addresses, .11 on h1 and .12 on h2
DOV_DATA_PORT = "4791"  # off 4789, which the lab's hosts may use for other VXLANs
HAND_VXLAN_PORT = "4790"


@dataclass(frozen=True)
class Column:
    """One path under test: where the client runs and the server's address on that path."""

    name: str
    client: ContainerNetns
    server: ContainerNetns
    server_ip: str


@dataclass
class Results:
    rounds: int
    seconds: int
    mtu: int
    gbps: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in COLUMNS})
    rtt_us: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in COLUMNS})
    pings_sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))


# --- the three paths ---------------------------------------------------------------------------------
def start_pyoverlay(lab: Lab) -> tuple[ContainerNetns, ContainerNetns]:
    h1, h2 = lab.hosts
    h1.create_network(PYO_NET, "--subnet", PYO_SUBNET)
    wait_network(h2, PYO_NET)
    return run_pair(lab, PYO_NET, "dp")


def run_pair(lab: Lab, network: str, prefix: str) -> tuple[ContainerNetns, ContainerNetns]:
    """One container on each host on ``network``: (client on h1, server on h2)."""
    pair = []
    for h, suffix in zip(lab.hosts, ("a", "b"), strict=True):
        name = f"{prefix}-{suffix}"
        h.docker("run", "-d", "--init", "--name", name, "--network", network, lab.image, *SLEEP)
        pair.append(ContainerNetns.of(h, name))
    return pair[0], pair[1]


def build_hand_path(lab: Lab, containers: tuple[ContainerNetns, ContainerNetns], mtu: int) -> None:
    """hbbr (bridge) + hbvx (VXLAN 999, all-zeros FDB entry to the peer) in each host's namespace, and
    a veth hbv1 <-> hbce1 whose end hbce1 is a second interface of the container."""
    for i, c in enumerate(containers, start=1):
        h, peer, m = c.host, lab.hosts[2 - i].address, str(mtu)
        for cmd in (
            f"ip link add hbbr mtu {m} type bridge",
            "ip link set hbbr up",
            f"ip link add hbvx mtu {m} type vxlan id 999 local {h.address} dstport {HAND_VXLAN_PORT}"
            " dev eth0 nolearning",
            "ip link set hbvx master hbbr up",
            f"bridge fdb append 00:00:00:00:00:00 dev hbvx dst {peer}",
            # dockerd's FORWARD policy is DROP and br_netfilter is on: bridged frames need this
            "iptables -I FORWARD 1 -i hbbr -o hbbr -j ACCEPT",
            f"ip link add hbv1 mtu {m} type veth peer name hbce1 mtu {m} netns {c.pid}",
            "ip link set hbv1 master hbbr up",
        ):
            h.run(cmd.split())
        c.run(["ip", "addr", "add", f"{HAND_PREFIX}.{10 + i}/24", "dev", "hbce1"])
        c.run(["ip", "link", "set", "hbce1", "up"])


def remove_hand_path(lab: Lab) -> None:
    for h in lab.hosts:
        for dev in ("hbv1", "hbvx", "hbbr"):  # hbce1 goes with hbv1
            h.run(["ip", "link", "del", dev], check=False)
        h.run(["iptables", "-D", "FORWARD", "-i", "hbbr", "-o", "hbbr", "-j", "ACCEPT"], check=False)


def start_swarm_overlay(lab: Lab, mtu: int) -> tuple[ContainerNetns, ContainerNetns]:
    h1, h2 = lab.hosts
    h1.docker("swarm", "init", "--advertise-addr", h1.address, "--data-path-port", DOV_DATA_PORT)
    token = h1.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    h2.docker("swarm", "join", "--advertise-addr", h2.address, "--token", token, f"{h1.address}:2377")
    h1.docker(
        "network", "create", "-d", "overlay", "--attachable", "--subnet", DOV_SUBNET,
        "-o", f"com.docker.network.driver.mtu={mtu}", DOV_NET,
    )  # fmt: skip
    return run_pair(lab, DOV_NET, "dov")


def leave_swarm(lab: Lab) -> None:
    h1, h2 = lab.hosts
    for h in (h2, h1):  # the worker first: the manager's leave would strand it
        h.docker("swarm", "leave", "--force", check=False)


# --- measurements ------------------------------------------------------------------------------------
def start_iperf_server(c: ContainerNetns) -> None:
    c.run(["iperf3", "-s", "-D", "-p", IPERF_PORT, "-I", iperf_pidfile(c)])


def stop_iperf_server(c: ContainerNetns) -> None:
    c.host.run(["sh", "-c", f'kill "$(cat {iperf_pidfile(c)})"'], check=False)


def iperf_pidfile(c: ContainerNetns) -> str:
    return f"/run/{c.name}-iperf3.pid"  # the host's private /run


def iperf_gbps(col: Column, seconds: int) -> float:
    out = col.client.run(
        ["iperf3", "-J", "-c", col.server_ip, "-p", IPERF_PORT, "-t", str(seconds)], timeout=seconds + 60
    ).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def ping_rtts_us(col: Column, count: int, interval: float) -> list[float]:
    """Per-packet RTTs in µs; lost echoes are simply missing (the caller counts them)."""
    out = col.client.run(
        ["busybox", "ping", "-c", str(count), "-i", str(interval), "-W", "2", col.server_ip],
        check=False,
        timeout=count * interval + 30,
    ).stdout
    return [float(ms) * 1e3 for ms in re.findall(r"time=([0-9.]+) ms", out)]


def measure(lab: Lab, rounds: int, seconds: int, pings: int = 100, ping_interval: float = 0.01) -> Results:
    """Set the three paths up on a 2-host lab whose agents run, measure, and take it all down again."""
    h1, h2 = lab.hosts
    servers: list[ContainerNetns] = []
    try:
        pyo_a, pyo_b = start_pyoverlay(lab)
        pyo_ip = ip_of(h2, pyo_b.name, PYO_NET)
        mtu = pyo_a.mtu_towards(pyo_ip)  # pyoverlay's; the other two paths copy it
        build_hand_path(lab, (pyo_a, pyo_b), mtu)
        dov_a, dov_b = start_swarm_overlay(lab, mtu)
        columns = [
            Column("pyoverlay", pyo_a, pyo_b, pyo_ip),
            Column("hand-built", pyo_a, pyo_b, f"{HAND_PREFIX}.12"),
            Column("docker overlay", dov_a, dov_b, ip_of(h2, dov_b.name, DOV_NET)),
        ]
        for col in columns:
            col.client.wait_reachable(col.server_ip)
        for server in (pyo_b, dov_b):
            start_iperf_server(server)
            servers.append(server)
        results = Results(rounds, seconds, mtu)
        for r in range(rounds):
            order = columns[r % 3 :] + columns[: r % 3]  # each column leads in turn
            for col in order:
                results.gbps[col.name].append(iperf_gbps(col, seconds))
            for col in order:
                results.rtt_us[col.name] += ping_rtts_us(col, pings, ping_interval)
                results.pings_sent[col.name] += pings
            print(
                f"  round {r + 1}/{rounds}: "
                + ", ".join(f"{c.name} {results.gbps[c.name][-1]:.2f}" for c in columns)
                + " Gbit/s",
                flush=True,
            )
        return results
    finally:
        for server in servers:
            stop_iperf_server(server)
        remove_hand_path(lab)
        for h, names in ((h1, ("dp-a", "dov-a")), (h2, ("dp-b", "dov-b"))):
            h.docker("rm", "-f", *names, check=False)
        h1.docker("network", "rm", DOV_NET, check=False)
        leave_swarm(lab)
        h1.docker("network", "rm", PYO_NET, check=False)


# --- report ------------------------------------------------------------------------------------------
def print_results(res: Results) -> None:
    print(
        f"datapath, container MTU {res.mtu}: {res.rounds} interleaved rounds of iperf3 (1 TCP stream, "
        f"{res.seconds} s) and busybox ping per column"
    )
    print(f"  {'':<16} {'Gbit/s median':>13} {'min':>6} {'max':>6}   {'RTT µs p50':>10} {'p99':>6}  lost")
    for c in COLUMNS:
        g, rtt = res.gbps[c], res.rtt_us[c]
        print(
            f"  {c:<16} {statistics.median(g):13.2f} {min(g):6.2f} {max(g):6.2f}   "
            f"{pct(rtt, 0.5):10.0f} {pct(rtt, 0.99):6.0f}  {res.pings_sent[c] - len(rtt)}/{res.pings_sent[c]}"
        )
    for other in COLUMNS[1:]:
        paired = [p / o for p, o in zip(res.gbps["pyoverlay"], res.gbps[other], strict=True)]
        ratio = statistics.median(res.gbps["pyoverlay"]) / statistics.median(res.gbps[other])
        p50 = pct(res.rtt_us["pyoverlay"], 0.5) / pct(res.rtt_us[other], 0.5)
        p99 = pct(res.rtt_us["pyoverlay"], 0.99) / pct(res.rtt_us[other], 0.99)
        print(
            f"  pyoverlay / {other:<15} throughput {ratio:.2f} (median of per-round ratios "
            f"{statistics.median(paired):.2f}, {min(paired):.2f}–{max(paired):.2f})   "
            f"RTT p50 {p50:.2f}  p99 {p99:.2f}"
        )


def describe_checkout(h: LabHost) -> str:
    """What was measured: the commit of this checkout (the agents run its code), kernel and dockerd."""
    repo = Path(__file__).resolve().parent.parent
    git = ["git", "-C", str(repo)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "driver", "plugin"], capture_output=True)
    version = h.docker("version", "-f", "{{.Server.Version}}").stdout.strip()
    kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    changes = " + uncommitted datapath changes" if dirty.stdout else ""
    return f"commit {commit.strip()}{changes}, kernel {kernel}, dockerd {version}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration per column and round")
    parser.add_argument("--pings", type=int, default=100, help="echoes per column and round")
    parser.add_argument("--ping-interval", type=float, default=0.01, help="seconds between echoes")
    parser.add_argument("--mtu", type=int, default=1500, help="underlay MTU")
    parser.add_argument("--engine", help="Docker engine of both hosts (scripts/fetch-engine.sh)")
    args = parser.parse_args()
    with Lab(2, name="pyodp", mtu=args.mtu, etcd=True, engine=args.engine) as lab:
        lab.start_agents()
        print(f"lab: 2 hosts, underlay MTU {args.mtu}, etcd; {describe_checkout(lab.hosts[0])}", flush=True)
        res = measure(lab, args.rounds, args.seconds, args.pings, args.ping_interval)
        print_results(res)


if __name__ == "__main__":
    main()
