"""Gratuitous ARP (IPv4) and unsolicited neighbour advertisements (IPv6, RFC 4861 7.2.6): tell the
neighbours on a network's bridge that an IP now has this MAC.

The VXLAN device answers ARP and neighbour solicitations itself (proxy), so an announcement never crosses
hosts: each host sends its own on its own bridge. Frames the host transmits through the bridge device are
flooded to the ports and never learned (the bridge learns only from frames received on a port).
"""

import heapq
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
IPPROTO_ICMPV6 = 58
NEIGHBOUR_ADVERTISEMENT = 136
OVERRIDE = 0x20000000  # the O flag: receivers replace the link-layer address they cached
MIN_FRAME = 60  # Ethernet minimum without the FCS


def garp_frame(ip: str, mac: str) -> bytes:
    """A gratuitous ARP request: broadcast, sender = target = ip, sender hardware address = mac."""
    hw = bytes.fromhex(mac.replace(":", ""))
    if len(hw) != 6:
        raise ValueError(f"invalid MAC address {mac!r}")
    address = ipaddress.IPv4Address(ip).packed
    ethernet = BROADCAST + hw + ETH_P_ARP.to_bytes(2, "big")
    # htype Ethernet, ptype IPv4, hlen 6, plen 4, op request
    arp = bytes.fromhex("0001080006040001") + hw + address + b"\0" * 6 + address
    return (ethernet + arp).ljust(MIN_FRAME, b"\0")


def na_frame(ip: str, mac: str) -> bytes:
    """An unsolicited neighbour advertisement to all nodes: target = ip, target link-layer address = mac,
    Override set (so caches holding another MAC for ip take this one), hop limit 255 (receivers drop any
    other)."""
    hw = bytes.fromhex(mac.replace(":", ""))
    if len(hw) != 6:
        raise ValueError(f"invalid MAC address {mac!r}")
    source = ipaddress.IPv6Address(ip).packed
    option = bytes([2, 1]) + hw  # target link-layer address, 8 bytes
    body = OVERRIDE.to_bytes(4, "big") + source + option
    pseudo = source + ALL_NODES.packed + (4 + len(body)).to_bytes(4, "big") + bytes([0, 0, 0, IPPROTO_ICMPV6])
    checksum = _checksum(pseudo + bytes([NEIGHBOUR_ADVERTISEMENT, 0, 0, 0]) + body)
    icmp = bytes([NEIGHBOUR_ADVERTISEMENT, 0]) + checksum.to_bytes(2, "big") + body
    header = (0x60000000).to_bytes(4, "big") + len(icmp).to_bytes(2, "big") + bytes([IPPROTO_ICMPV6, 255])
    ethernet = ALL_NODES_MAC + hw + ETH_P_IPV6.to_bytes(2, "big")
    return ethernet + header + source + ALL_NODES.packed + icmp


def announcement(ip: str, mac: str) -> bytes:
    """The frame that announces ip at mac: a gratuitous ARP for IPv4, a neighbour advertisement for IPv6."""
    return na_frame(ip, mac) if ipaddress.ip_address(ip).version == 6 else garp_frame(ip, mac)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Repeater:
    """Sends announcements again later, all from one thread: a thread per announcement (sleeping up to the
    last repeat) kept dozens alive in a busy agent, and glibc keeps the stacks of the peak count."""

    def __init__(self) -> None:
        # (when, order, send, ifname, key)
        self._due: list[tuple[float, int, Callable[[], None], str, Hashable]] = []
        self._order = 0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def send_later(
        self, send: Callable[[], None], ifname: str, delays: Iterable[float], key: Hashable = None
    ) -> None:
        """Call send again after each delay (seconds from now); a failure (the bridge or namespace went
        meanwhile) only ends that announcement's repeats. Repeats still pending under the same ``key``
        (the same IP on the same bridge) are superseded and dropped: a late repeat of an IP's old MAC
        would otherwise undo the announcement of its new one (a container replaced within seconds)."""
        now = time.monotonic()
        with self._wake:
            if self._closed:
                return
            if key is not None and any(due[4] == key for due in self._due):
                self._due = [due for due in self._due if due[4] != key]
                heapq.heapify(self._due)
            for delay in sorted(delays):
                self._order += 1
                heapq.heappush(self._due, (now + delay, self._order, send, ifname, key))
            if self._thread is None or not self._thread.is_alive():  # first use, or after a fork
                self._thread = threading.Thread(target=self._run, name="announce-again", daemon=True)
                self._thread.start()
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._due.clear()
            self._wake.notify()

    def _run(self) -> None:
        failed: set[Callable[[], None]] = set()  # sends that failed: their later repeats are dropped
        while True:
            with self._wake:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                if self._closed:
                    return
                _, _, send, ifname, _ = heapq.heappop(self._due)
                if not self._due:
                    failed.clear()
            if send in failed:
                continue
            try:
                send()
            except Exception as exc:  # pyroute2's namespace helper raises its own types too
                failed.add(send)
                log.debug("%s: announce again: %s", ifname, exc)
