"""An encrypted network vs a plain one on the same two lab hosts: throughput and RTT, with ratios.

    sudo .venv/bin/python -m benchmarks.encryption [--rounds 5] [--seconds 5] [--pings 100]

One container pair per network (one container on each host), measured in interleaved rounds (the order
alternates), medians over rounds, as benchmarks.datapath does: iperf3 (one TCP stream, the host's binary
in each container's namespace) and busybox ping's per-packet times. The agents' log says which WireGuard
carried the encrypted network (kernel or wireguard-go); on this machine's kernel, with no WireGuard
module, it is wireguard-go.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.datapath import IPERF_PORT, Column, iperf_gbps, ping_rtts_us, run_pair
from benchmarks.lab_helpers import ip_of, pct, wait_network
from tests.lab import Lab

NETWORKS = {
    "plain": ("encplain", "10.63.0.0/24", ()),
    "encrypted": ("encsealed", "10.64.0.0/24", ("-o", "encrypted")),
}


def start_pairs(lab: Lab) -> dict[str, Column]:
    h1, h2 = lab.hosts
    columns = {}
    for label, (network, subnet, options) in NETWORKS.items():
        h1.create_network(network, "--subnet", subnet, *options)
        wait_network(h2, network)
        client, server = run_pair(lab, network, network)
        server_ip = ip_of(h2, server.name, network)
        client.wait_reachable(server_ip)
        server.run(["iperf3", "-s", "-D", "-p", IPERF_PORT])
        columns[label] = Column(label, client, server, server_ip)
    return columns


def mode(lab: Lab) -> str:
    lines = [line for line in lab.hosts[0].agent_log().splitlines() if "tunnel device" in line]
    return lines[-1].split(": ", 1)[-1] if lines else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration per measurement")
    parser.add_argument("--pings", type=int, default=100)
    args = parser.parse_args()
    with Lab(2, name="pyoenc", etcd=True) as lab:
        lab.start_agents()
        columns = start_pairs(lab)
        gbps: dict[str, list[float]] = {c: [] for c in columns}
        rtt: dict[str, list[float]] = {c: [] for c in columns}
        for r in range(args.rounds):
            for label in sorted(columns, reverse=bool(r % 2)):
                gbps[label].append(iperf_gbps(columns[label], args.seconds))
                rtt[label].extend(ping_rtts_us(columns[label], args.pings, 0.01))
        mtus = {c: col.client.mtu_towards(col.server_ip) for c, col in columns.items()}
        print(f"lab: 2 hosts, etcd; {args.rounds} rounds of iperf3 {args.seconds} s and {args.pings} pings")
        print(f"encrypted network carried by: {mode(lab)}")
        for label in columns:
            print(
                f"  {label:<10} MTU {mtus[label]}  throughput {statistics.median(gbps[label]):.2f} Gbit/s  "
                f"RTT p50 {pct(rtt[label], 0.5):.0f} us  p99 {pct(rtt[label], 0.99):.0f} us  "
                f"(pings answered {len(rtt[label])}/{args.pings * args.rounds})"
            )
        throughput = statistics.median(gbps["encrypted"]) / statistics.median(gbps["plain"])
        latency = pct(rtt["encrypted"], 0.5) / pct(rtt["plain"], 0.5)
        print(f"  ratio encrypted/plain: throughput {throughput:.2f}x  RTT p50 {latency:.2f}x")


if __name__ == "__main__":
    main()
