"""Throughput and RTT through a WireGuard tunnel vs the plain veth under it, same two namespaces:

    sudo .venv/bin/python -m benchmarks.wireguard [--rounds 3] [--seconds 5] [--pings 200] [--mode userspace]

Two throwaway namespaces joined by a veth (MTU 1500); a Tunnel in each (driver/wireguard.py, MTU 1440),
peers of each other. Per round, interleaved: iperf3 (one TCP stream) to the peer's veth address, then to
its tunnel address; ICMP echoes (56 bytes, 10 ms apart) the same way. Medians over rounds, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import statistics
import struct
import subprocess
import time

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netns import create_socket

from driver.wireguard import Tunnel, TunnelPeer, generate_private_key, kernel_wireguard, mtu_for, public_key

PORT = 51820


def _in(netns: str, *command: str, timeout: float = 120) -> str:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", *command],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    ).stdout


def build(mode: str | None) -> tuple[list[str], list[Tunnel]]:
    names = [f"pyo-wgbench-{secrets.token_hex(3)}" for _ in range(2)]
    for name in names:
        pyroute2_netns.create(name)
    with IPRoute(netns=names[0], flags=0) as ipr:
        ipr.link("add", ifname="under0", kind="veth", peer="under1")
        ipr.link("set", index=ipr.link_lookup(ifname="under1")[0], net_ns_fd=names[1])
    keys = [generate_private_key() for _ in names]
    tunnels = [Tunnel(f"pyowgbench{i}", name, mode=mode) for i, name in enumerate(names)]
    for i, name in enumerate(names):
        with IPRoute(netns=name, flags=0) as ipr:
            for ifname in ("lo", f"under{i}"):
                index = ipr.link_lookup(ifname=ifname)[0]
                if ifname != "lo":
                    ipr.addr("add", index=index, address=f"192.0.2.{i + 1}", prefixlen=24)
                ipr.link("set", index=index, state="up")
        tunnels[i].ensure(keys[i], PORT, f"10.9.0.{i + 1}/24", mtu_for(1500, ipv6_underlay=False))
    for i, tunnel in enumerate(tunnels):
        other = 1 - i
        peer = TunnelPeer(f"192.0.2.{other + 1}:{PORT}", (f"10.9.0.{other + 1}/32",))
        tunnel.set_peers({public_key(keys[other]): peer})
    return names, tunnels


def iperf_gbps(client: str, server_ip: str, seconds: int) -> float:
    report = json.loads(
        _in(client, "iperf3", "-J", "-c", server_ip, "-t", str(seconds), timeout=seconds + 60)
    )
    return report["end"]["sum_received"]["bits_per_second"] / 1e9


def rtts_us(netns: str, destination: str, count: int) -> list[float]:
    sock = create_socket(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, flags=0)
    sock.settimeout(1.0)
    ident, samples = secrets.randbelow(0xFFFF), []
    with sock:
        for sequence in range(1, count + 1):
            payload = bytes(56)
            header = struct.pack("!BBHHH", 8, 0, 0, ident, sequence)
            data = header + payload
            total = sum(struct.unpack(f"!{len(data) // 2}H", data))
            total = (total >> 16) + (total & 0xFFFF)
            checksum = ~(total + (total >> 16)) & 0xFFFF
            start = time.perf_counter()
            sock.sendto(struct.pack("!BBHHH", 8, 0, checksum, ident, sequence) + payload, (destination, 0))
            while True:
                try:
                    reply = sock.recv(2048)
                except TimeoutError:
                    break
                offset = (reply[0] & 0x0F) * 4
                kind, _, _, reply_id, reply_seq = struct.unpack("!BBHHH", reply[offset : offset + 8])
                if kind == 0 and reply_id == ident and reply_seq == sequence:
                    samples.append((time.perf_counter() - start) * 1e6)
                    break
            time.sleep(0.01)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration per column and round")
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument(
        "--mode", choices=["kernel", "userspace"], help="default: the kernel module if present"
    )
    args = parser.parse_args()
    names, tunnels = build(args.mode)
    columns = {"veth": "192.0.2.2", "wireguard": "10.9.0.2"}
    gbps: dict[str, list[float]] = {column: [] for column in columns}
    rtt: dict[str, list[float]] = {column: [] for column in columns}
    server = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{names[1]}", "iperf3", "-s"], stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        rtts_us(names[0], "10.9.0.2", 5)  # the handshake, before anything is timed
        for _ in range(args.rounds):
            for column, address in columns.items():
                gbps[column].append(iperf_gbps(names[0], address, args.seconds))
                rtt[column] += rtts_us(names[0], address, args.pings)
    finally:
        server.terminate()
        server.wait()
        for tunnel in tunnels:
            tunnel.remove()
        for name in names:
            pyroute2_netns.remove(name)
    mode = tunnels[0].mode + ("" if kernel_wireguard() else " (this kernel has no WireGuard module)")
    print(
        f"WireGuard {mode} vs plain veth: {args.rounds} rounds, iperf3 1 TCP stream {args.seconds} s, "
        f"{args.pings} pings a round"
    )
    for column in columns:
        p50 = statistics.median(rtt[column])
        p99 = statistics.quantiles(rtt[column], n=100)[98]
        print(
            f"  {column:>9}: {statistics.median(gbps[column]):6.2f} Gbit/s   "
            f"RTT p50 {p50:6.0f} µs  p99 {p99:6.0f} µs"
        )
    ratio_gbps = statistics.median(gbps["wireguard"]) / statistics.median(gbps["veth"])
    ratio_rtt = statistics.median(rtt["wireguard"]) / statistics.median(rtt["veth"])
    print(f"  wireguard/veth: throughput x{ratio_gbps:.2f}, RTT p50 x{ratio_rtt:.2f}")


if __name__ == "__main__":
    main()
