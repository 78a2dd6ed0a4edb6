"""Crafted Ethernet frames and a frame counter, for the spoofing tests (T11); run inside a container's (or a
test namespace's) network namespace:

    python -m tests.spoof send --iface eth0 --kind udp4 --src-mac M --dst-mac M --src-ip A --dst-ip B
    python -m tests.spoof count --iface eth0 --needle HEX --seconds 3      # prints the count

Kinds: udp4 / udp6 (a datagram carrying --marker), arp (a reply: sender --src-mac/--src-ip, to --dst-*),
na (an unsolicited IPv6 neighbour advertisement for --src-ip, from --src-ip, to all nodes). Frames go out
through AF_PACKET exactly as given: the kernel's own checks (source address, ARP) are not in the way.
The counter counts frames seen on the interface that contain the needle's bytes.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ip4_header(src: str, dst: str, proto: int, length: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:]


def frame(kind: str, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, marker: bytes) -> bytes:
    if kind == "udp4":
        udp = struct.pack("!HHHH", 40000, 7777, 8 + len(marker), 0) + marker
        return _mac(dst_mac) + _mac(src_mac) + b"\x08\x00" + _ip4_header(src_ip, dst_ip, 17, len(udp)) + udp
    if kind == "arp":
        body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + _mac(src_mac) + socket.inet_aton(src_ip)
        return _mac(dst_mac) + _mac(src_mac) + b"\x08\x06" + body + _mac(dst_mac) + socket.inet_aton(dst_ip)
    src6 = ipaddress.IPv6Address(src_ip).packed
    if kind == "udp6":
        udp = struct.pack("!HHHH", 40000, 7777, 8 + len(marker), 0) + marker
        dst6 = ipaddress.IPv6Address(dst_ip).packed
        return _mac(dst_mac) + _mac(src_mac) + b"\x86\xdd" + _ip6_header(src6, dst6, 17, len(udp)) + udp
    if kind == "na":  # override flag set: neighbours replace what they cached for the target
        icmp = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + src6 + b"\x02\x01" + _mac(src_mac)
        all_nodes = ipaddress.IPv6Address("ff02::1").packed
        header = _ip6_header(src6, all_nodes, 58, len(icmp), hop_limit=255)
        return _mac("33:33:00:00:00:01") + _mac(src_mac) + b"\x86\xdd" + header + icmp
    raise ValueError(f"unknown kind {kind!r}")


def _ip6_header(src: bytes, dst: bytes, next_header: int, length: int, hop_limit: int = 64) -> bytes:
    return struct.pack("!IHBB", 6 << 28, length, next_header, hop_limit) + src + dst


def send(iface: str, data: bytes, count: int) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((iface, 0))
        for _ in range(count):
            sock.send(data)
            time.sleep(0.005)


def count(iface: str, needle: bytes, seconds: float) -> int:
    seen = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        sock.bind((iface, 0))
        print("listening", file=sys.stderr, flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, address = sock.recvfrom(65535)
            except TimeoutError:
                break
            if address[2] != socket.PACKET_OUTGOING and needle in data:
                seen += 1
    return seen


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send")
    for name in ("--iface", "--kind", "--src-mac", "--dst-mac", "--src-ip", "--dst-ip"):
        s.add_argument(name, required=True)
    s.add_argument("--marker", default="pyoverlay-spoof")
    s.add_argument("--count", type=int, default=10)
    c = sub.add_parser("count")
    c.add_argument("--iface", required=True)
    c.add_argument("--needle", required=True, help="hex bytes")
    c.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.command == "send":
        data = frame(args.kind, args.src_mac, args.dst_mac, args.src_ip, args.dst_ip, args.marker.encode())
        send(args.iface, data, args.count)
    else:
        print(count(args.iface, bytes.fromhex(args.needle), args.seconds), flush=True)


if __name__ == "__main__":
    main()
