"""Gratuitous ARP: tell the neighbours on a network's bridge that an IP now has this MAC.

The VXLAN device answers ARP itself (proxy ARP), so an announcement never crosses hosts: each host sends
its own on its own bridge. Frames the host transmits through the bridge device are flooded to the ports
and never learned (the bridge learns only from frames received on a port).
"""

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable

from pyroute2.netns import create_socket

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
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


class FrameSender:
    """Raw Ethernet frames out of named interfaces of one namespace (None: the current one), all from one
    long-lived packet socket. Closing a packet socket waits for an RCU grace period (packet_release calls
    synchronize_net), ~16 ms on the lab's VM, which Join paid on every announcement when each frame had
    a socket of its own. The socket is bound to no protocol, so it receives, and queues, nothing."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pid = 0

    def _socket(self) -> socket.socket:
        with self._lock:
            if self._sock is None or self._pid != os.getpid():  # never the socket of a parent process
                if self.netns is None:
                    self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                else:
                    # flags=0: fail on a missing namespace instead of creating it
                    self._sock = create_socket(self.netns, socket.AF_PACKET, socket.SOCK_RAW, 0, flags=0)
                self._pid = os.getpid()
            return self._sock

    def send(self, ifname: str, frame: bytes) -> None:
        """Send one frame out of ifname (OSError ENODEV if there is no such interface)."""
        self._socket().sendto(frame, (ifname, int.from_bytes(frame[12:14], "big")))

    def send_later(self, ifname: str, frame: bytes, delays: Iterable[float]) -> None:
        """Send the frame again after each delay (seconds from now), from a short-lived thread; a
        failure (the bridge or namespace went meanwhile) only ends the repeats."""
        delays = sorted(delays)
        if not delays:
            return

        def repeat() -> None:
            start = time.monotonic()
            for delay in delays:
                time.sleep(max(0.0, start + delay - time.monotonic()))
                try:
                    self.send(ifname, frame)
                except Exception as exc:  # pyroute2's namespace helper raises its own types too
                    log.debug("%s: announce again: %s", ifname, exc)
                    return

        threading.Thread(target=repeat, name=f"announce-{ifname}", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None and self._pid == os.getpid():
                self._sock.close()
            self._sock = None
