"""Helpers for netlink tests: namespaces, links, iptables and ICMP echo inside a namespace.

Tests build their fixtures with pyroute2 and nsenter only: no `ip`, `ping` or `sysctl` binaries needed.
"""

import os
import re
import shutil
import socket
import struct
import subprocess
import time
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netns import create_socket

from driver.names import vni_from_name

NETNS_RUN_DIR = "/run/netns"
PYOVERLAY_PREFIXES = ("pobr", "povx", "poh", "poc", "poex", "poep", "podel")
# tests use VNIs from here up and endpoint IDs starting "test" (never hex), so the leak check can
# tell their devices from those of a real agent running on the same machine
TEST_VNI = 16_000_000
_IP_MTU_DISCOVER, _IP_PMTUDISC_DO = 10, 2  # <linux/in.h>; the socket module has them only from 3.12


def net_ns(host: str, vni: int) -> str:
    """The name of the namespace a Dataplane(netns=host) keeps the network in (driver/netns.py)."""
    return f"{host}-{vni}"


def require(condition: bool, reason: str) -> None:
    """Skip when the machine can't run the test, except under CI, whose machine must."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to run netlink tests: {reason}")
    pytest.skip(reason)


def in_netns(netns: str | None, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in a named network namespace (None: the current one)."""
    full = list(command) if netns is None else ["nsenter", f"--net={NETNS_RUN_DIR}/{netns}", *command]
    return subprocess.run(full, capture_output=True, text=True, check=check, timeout=30)


def iptables_rules(netns: str | None, chain: str = "FORWARD") -> list[str]:
    """`iptables -S chain` lines in a namespace."""
    return in_netns(netns, "iptables", "-w", "-S", chain).stdout.splitlines()


def pyoverlay_rules(netns: str | None) -> list[str]:
    return [rule for rule in iptables_rules(netns) if "pyoverlay" in rule]


def write_sysctl(netns: str, key: str, value: str) -> None:
    # /proc/sys/net resolves against the namespace of the process that opens it
    path = "/proc/sys/" + key.replace(".", "/")
    in_netns(netns, "sh", "-c", f"echo {value} > {path}")


def read_sysctl(netns: str, key: str) -> str | None:
    path = "/proc/sys/" + key.replace(".", "/")
    result = in_netns(netns, "cat", path, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def pyoverlay_links(netns: str | None) -> set[str]:
    with IPRoute(netns=netns, flags=0) if netns else IPRoute() as ipr:
        names = {link.get("ifname") for link in ipr.link("dump")}
    return {name for name in names if name.startswith(PYOVERLAY_PREFIXES)}


def _test_owned(name: str) -> bool:
    vni = vni_from_name(name)
    return (vni is not None and vni >= TEST_VNI) or name.startswith(("pohtest", "poctest"))


def root_snapshot() -> tuple[frozenset[str], frozenset[str]]:
    """Test-owned devices and FORWARD rules in this process's own namespace (tests must add none).

    Only test VNIs and "test" endpoint IDs count: a real agent may be at work on the same machine.
    """
    rules: frozenset[str] = frozenset()
    if shutil.which("iptables"):
        rules = frozenset(
            rule
            for rule in pyoverlay_rules(None)
            if (match := re.search(r"pyoverlay vni (\d+)", rule)) and int(match.group(1)) >= TEST_VNI
        )
    return frozenset(filter(_test_owned, pyoverlay_links(None))), rules


def link(ipr: IPRoute, ifname: str) -> Any:
    return ipr.link("get", ifname=ifname)[0]


def vxlan_attr(link_msg: Any, attr: str) -> Any:
    return link_msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", f"IFLA_VXLAN_{attr.upper()}")


def set_up_interface(netns: str, ifname: str, address: str | None = None, prefixlen: int = 24) -> None:
    """Bring lo and ifname up in netns, optionally with an IPv4 address."""
    with IPRoute(netns=netns, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        index = ipr.link_lookup(ifname=ifname)[0]
        if address:
            ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")


def move_link(from_netns: str, ifname: str, to_netns: str) -> None:
    with IPRoute(netns=from_netns, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], net_ns_fd=to_netns)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(netns: str, destination: str, timeout: float = 5.0, size: int = 36) -> bool:
    """True as soon as one ICMP echo (size payload bytes, DF set) to destination is answered in time."""
    ident = os.getpid() & 0xFFFF
    sock = create_socket(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, flags=0)
    # DF on: an echo too big for a link on the way must be dropped, not fragmented
    sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
    deadline = time.monotonic() + timeout
    with sock:
        sequence = 0
        while time.monotonic() < deadline:
            sequence = (sequence + 1) & 0xFFFF
            header = struct.pack("!BBHHH", 8, 0, 0, ident, sequence)
            payload = (b"pyoverlay" * (size // 9 + 1))[:size]
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, sequence) + payload
            try:
                sock.sendto(packet, (destination, 0))
            except OSError:
                time.sleep(0.2)  # no route or neighbour yet
                continue
            wait_until = min(deadline, time.monotonic() + 0.3)
            while (remaining := wait_until - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    data, (source, _) = sock.recvfrom(2048)
                except TimeoutError:
                    break
                offset = (data[0] & 0x0F) * 4  # raw sockets deliver the IP header too
                kind, _, _, reply_id, _ = struct.unpack("!BBHHH", data[offset : offset + 8])
                if kind == 0 and reply_id == ident and source == destination:
                    return True
    return False


def add_address6(netns: str, ifname: str, address: str, prefixlen: int = 64) -> None:
    """An IPv6 address usable at once: no duplicate address detection (as Docker sets container ones)."""
    with IPRoute(netns=netns, flags=0) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen, flags=_IFA_F_NODAD)


_IFA_F_NODAD = 0x02  # <linux/if_addr.h>


def ping6(netns: str, destination: str, timeout: float = 5.0) -> bool:
    """True as soon as one ICMPv6 echo to destination is answered in time (the kernel computes the
    checksum of a raw ICMPv6 socket, and delivers no IPv6 header)."""
    ident = os.getpid() & 0xFFFF
    sock = create_socket(netns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6, flags=0)
    deadline = time.monotonic() + timeout
    with sock:
        sequence = 0
        while time.monotonic() < deadline:
            sequence = (sequence + 1) & 0xFFFF
            try:
                sock.sendto(
                    struct.pack("!BBHHH", 128, 0, 0, ident, sequence) + b"pyoverlay6", (destination, 0)
                )
            except OSError:
                time.sleep(0.2)
                continue
            wait_until = min(deadline, time.monotonic() + 0.3)
            while (remaining := wait_until - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    data, address = sock.recvfrom(2048)
                except TimeoutError:
                    break
                kind, _, _, reply_id, _ = struct.unpack("!BBHHH", data[:8])
                if kind == 129 and reply_id == ident and address[0] == destination:
                    return True
    return False
