"""Helpers for the WireGuard tests: two "hosts" joined by a veth underlay with a Tunnel each, a capture on
the underlay, UDP markers and a steady ping stream inside namespaces."""

import contextlib
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from pyroute2 import IPRoute
from pyroute2.netns import create_socket

from driver import wireguard_go
from driver.wireguard import Tunnel, TunnelPeer, generate_private_key, kernel_wireguard, public_key

from .nsutil import move_link, require, set_up_interface

PORT = 51820
TUNNEL_MTU = 1420
ETH_P_ALL = 0x0003


@dataclass
class WgHost:
    netns: str
    tunnel: Tunnel
    key: str
    underlay_ip: str
    underlay_if: str
    tunnel_ip: str
    extra: list[Tunnel] = field(default_factory=list)  # more tunnels to remove at the end

    @property
    def public(self) -> str:
        return public_key(self.key)

    def as_peer(self, keepalive: int = 25) -> dict[str, TunnelPeer]:
        return {self.public: TunnelPeer(f"{self.underlay_ip}:{PORT}", (f"{self.tunnel_ip}/32",), keepalive)}


def tunnel_name() -> str:
    # tunnels of every test share this mount namespace's /var/run/wireguard (and other sessions may run
    # these tests at once): random names keep their sockets apart
    return f"pyowg{secrets.token_hex(3)}"


def require_mode(mode: str) -> None:
    if mode == "kernel":
        if not kernel_wireguard():  # CI's kernel has no module either: a skip, not a failure
            pytest.skip("this kernel can't make a wireguard link (`ip link add type wireguard` fails)")
    else:
        require(wireguard_go.shutil.which(wireguard_go.BINARY) is not None, "wireguard-go is not installed")


def veth_between(netns_a: str, ip_a: str, netns_b: str, ip_b: str, prefix: str = "und") -> tuple[str, str]:
    """A veth pair joining two namespaces, addressed /24; returns the names (one per side)."""
    side_a, side_b = f"{prefix}{secrets.token_hex(2)}a", f"{prefix}{secrets.token_hex(2)}b"
    with IPRoute(netns=netns_a, flags=0) as ipr:
        ipr.link("add", ifname=side_a, kind="veth", peer=side_b)
    move_link(netns_a, side_b, netns_b)
    set_up_interface(netns_a, side_a, ip_a)
    set_up_interface(netns_b, side_b, ip_b)
    return side_a, side_b


def make_host(netns: str, mode: str, underlay: tuple[str, str], tunnel_ip: str) -> WgHost:
    """A host whose underlay is (ip, interface), with its tunnel up (no peers yet)."""
    tunnel = Tunnel(tunnel_name(), netns, mode=mode)
    host = WgHost(netns, tunnel, generate_private_key(), *underlay, tunnel_ip)
    host.tunnel.ensure(host.key, PORT, f"{tunnel_ip}/24", TUNNEL_MTU)
    return host


def tear_down(hosts: list[WgHost]) -> None:
    """Remove every tunnel, and make sure no wireguard-go of theirs outlives the test."""
    for host in hosts:
        for tunnel in [host.tunnel, *host.extra]:
            try:
                tunnel.remove()
            finally:
                if tunnel.netns and (pid := wireguard_go.daemon_pid(tunnel.name, tunnel.netns)):
                    os.kill(pid, 9)


@pytest.fixture(params=["userspace", "kernel"])
def pair(request: pytest.FixtureRequest, make_netns: Callable[[], str]) -> Iterator[tuple[WgHost, WgHost]]:
    """Hosts a (192.0.2.1, tunnel 10.9.0.1) and b (192.0.2.2, tunnel 10.9.0.2), peers of each other."""
    require_mode(request.param)
    ns_a, ns_b = make_netns(), make_netns()
    underlay = veth_between(ns_a, "192.0.2.1", ns_b, "192.0.2.2")
    hosts: list[WgHost] = []
    try:
        hosts.append(make_host(ns_a, request.param, ("192.0.2.1", underlay[0]), "10.9.0.1"))
        hosts.append(make_host(ns_b, request.param, ("192.0.2.2", underlay[1]), "10.9.0.2"))
        a, b = hosts
        a.tunnel.set_peers(b.as_peer())
        b.tunnel.set_peers(a.as_peer())
        yield a, b
    finally:
        tear_down(hosts)


class Capture:
    """Every frame seen on an interface of a namespace while the context is open."""

    def __init__(self, netns: str, ifname: str) -> None:
        self.sock = create_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL), flags=0)
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.1)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Capture":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # the last frames of the exchange
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.frames.append(self.sock.recv(65535))
            except TimeoutError:
                continue

    def udp_ports(self) -> list[tuple[int, int]]:
        """(source, destination) ports of the IPv4 UDP frames."""
        ports = []
        for frame in self.ipv4():
            offset = 14 + (frame[14] & 0x0F) * 4
            if frame[23] == socket.IPPROTO_UDP:
                ports.append(struct.unpack("!HH", frame[offset : offset + 4]))
        return ports

    def ipv4(self) -> list[bytes]:
        return [frame for frame in self.frames if frame[12:14] == b"\x08\x00"]

    def contains(self, marker: bytes) -> bool:
        return any(marker in frame for frame in self.frames)


def udp_receiver(netns: str, address: str, port: int = 9999) -> socket.socket:
    sock = create_socket(netns, socket.AF_INET, socket.SOCK_DGRAM, 0, flags=0)
    sock.bind((address, port))
    sock.settimeout(0.2)
    return sock


def send_marker(netns: str, destination: str, marker: bytes, receiver: socket.socket, timeout: float) -> bool:
    """Send marker by UDP from netns to destination:9999 a few times; whether receiver got it in time."""
    with create_socket(netns, socket.AF_INET, socket.SOCK_DGRAM, 0, flags=0) as sender:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # no route yet, or the tunnel refused (no peer for the address)
            with contextlib.suppress(OSError):
                sender.sendto(marker, (destination, receiver.getsockname()[1]))
            try:
                while True:
                    if receiver.recv(65535) == marker:
                        return True
            except TimeoutError:
                continue
    return False


def ping_stream(
    netns: str, destination: str, seconds: float, rate: int = 10, during: Callable[[], None] | None = None
) -> tuple[int, list[int], float]:
    """ICMP echoes at ``rate`` per second for ``seconds``; ``during`` runs in another thread after a
    second. Returns (echoes sent, sequence numbers answered, longest time without an answer in s)."""
    ident = secrets.randbelow(0xFFFF)
    answered: list[int] = []
    arrivals: list[float] = []
    sock = create_socket(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, flags=0)
    sock.settimeout(0.05)
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            offset = (data[0] & 0x0F) * 4
            kind, _, _, reply_id, sequence = struct.unpack("!BBHHH", data[offset : offset + 8])
            if kind == 0 and reply_id == ident:
                answered.append(sequence)
                arrivals.append(time.monotonic())

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    action = threading.Timer(1.0, during) if during else None
    if action:
        action.start()
    sent = 0
    start = time.monotonic()
    with sock:
        while time.monotonic() - start < seconds:
            sent += 1
            header = struct.pack("!BBHHH", 8, 0, 0, ident, sent)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header), ident, sent)
            with contextlib.suppress(OSError):
                sock.sendto(packet, (destination, 0))
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
        time.sleep(0.5)  # late answers
        stop.set()
        receiver.join()
        if action:
            action.join()
    silence = max(
        (later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)), default=seconds
    )
    return sent, sorted(set(answered)), silence


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF
