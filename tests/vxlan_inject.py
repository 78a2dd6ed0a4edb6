"""Crafted VXLAN packets and a UDP counter, for the injection tests (T10); run inside a namespace:

    ip netns exec NS python -m tests.vxlan_inject send --source 192.0.2.9 --to 192.0.2.2 --vni 4096 \
        --mac 02:42:0a:00:00:02 --ip 10.0.0.2 --count 20
    nsenter --net=PATH python -m tests.vxlan_inject listen --port 7777 --seconds 3   # prints the count

Each packet carries one Ethernet frame with an IPv4/UDP datagram to the inner --ip:--inner-port, as a
member host's VXLAN device would send it.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time

INNER_PORT = 7777
VXLAN_PORT = 4789


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def inner_frame(dst_mac: str, dst_ip: str, src_ip: str, port: int, payload: bytes) -> bytes:
    """Ethernet + IPv4 + UDP (no UDP checksum: allowed over IPv4)."""
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src_ip), socket.inet_aton(dst_ip),
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    src_mac = bytes.fromhex("02ee00000001")
    return bytes.fromhex(dst_mac.replace(":", "")) + src_mac + b"\x08\x00" + ip + udp


def vxlan_packet(vni: int, frame: bytes) -> bytes:
    """The VXLAN header (flags: VNI valid) and the frame: the UDP payload."""
    return struct.pack("!II", 0x08000000, vni << 8) + frame


def send(source: str, to: str, vni: int, mac: str, ip: str, count: int, port: int = VXLAN_PORT,
         inner_port: int = INNER_PORT, inner_source: str = "10.255.255.1") -> None:  # fmt: skip
    packet = vxlan_packet(vni, inner_frame(mac, ip, inner_source, inner_port, b"injected"))
    # over IPv6 as an encrypted network's devices send it (from tunnel addresses)
    with socket.socket(socket.AF_INET6 if ":" in to else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for _ in range(count):
            sock.sendto(packet, (to, port))
            time.sleep(0.005)


def listen(port: int, seconds: float) -> int:
    """Datagrams received on UDP port within seconds."""
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        print("listening", file=sys.stderr, flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                sock.recv(2048)
            except TimeoutError:
                break
            received += 1
    return received


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send")
    for name in ("--source", "--to", "--mac", "--ip"):
        s.add_argument(name, required=True)
    s.add_argument("--vni", type=int, required=True)
    s.add_argument("--count", type=int, default=10)
    s.add_argument("--port", type=int, default=VXLAN_PORT)
    s.add_argument("--inner-source", default="10.255.255.1", help="the inner packet's source address")
    l_ = sub.add_parser("listen")
    l_.add_argument("--port", type=int, default=INNER_PORT)
    l_.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.command == "send":
        send(
            args.source,
            args.to,
            args.vni,
            args.mac,
            args.ip,
            args.count,
            args.port,
            inner_source=args.inner_source,
        )
    else:
        print(listen(args.port, args.seconds), flush=True)


if __name__ == "__main__":
    main()
