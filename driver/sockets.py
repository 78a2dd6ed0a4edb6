"""Netlink sockets per thread and per namespace (pyroute2's IPRoute is one per thread), and raw packet
sockets per namespace for announcements."""

import os
import socket
import threading

from pyroute2 import IPRoute
from pyroute2.netns import create_socket

from .errors import DataplaneError
from .links import describe
from .netns import identity

# accesses of a thread's IPRoute before it is replaced: a bound on whatever replies pyroute2 leaves queued
# (link lookups no longer leave their ACK: links.find_link); a network's namespace costs a fork to reopen
SOCKET_USES = 10_000


def open_iproute(netns: str | None) -> IPRoute:
    """A new IPRoute in netns (a name under /run/netns or a path; None: the current one) that subscribes
    to no events.

    Subscribed sockets queue every broadcast the kernel sends; a long-lived agent never reads them.
    flags=0: pyroute2 would otherwise create a missing namespace instead of failing.
    """
    try:
        if netns is None:
            return IPRoute(groups=0)
        return IPRoute(netns=netns, flags=0, groups=0)
    except OSError as exc:
        raise DataplaneError(f"netns {netns or '(current)'}: open netlink socket: {describe(exc)}") from exc


class NetlinkSockets:
    """This thread's IPRoute in a namespace, opened on first use (a fork for another namespace: pyroute2
    enters it in a child process), replaced after SOCKET_USES uses, and after the namespace was made
    anew (a socket keeps the namespace it was opened in alive)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._open: list[tuple[int, IPRoute]] = []
        self._lock = threading.Lock()

    def get(self, netns: str | None, track_identity: bool = False) -> IPRoute:
        held = self._held()
        entry = held.get(netns)
        current = identity(netns) if track_identity and netns is not None else None
        if entry is not None:
            ipr, uses, inode = entry
            if uses < SOCKET_USES and inode == current:
                held[netns] = (ipr, uses + 1, inode)
                return ipr
            self._discard(ipr)
        if track_identity and current is None:
            held.pop(netns, None)
            raise DataplaneError(f"netns {netns}: not found")
        ipr = open_iproute(netns)
        with self._lock:
            self._open.append((os.getpid(), ipr))
        held[netns] = (ipr, 0, current)
        return ipr

    def drop(self, netns: str) -> None:
        """Close this thread's socket in netns (before the namespace is removed); other threads replace
        theirs when they next see the namespace gone or made anew."""
        entry = self._held().pop(netns, None)
        if entry is not None:
            self._discard(entry[0])

    def close(self) -> None:
        """Close every thread's sockets (at shutdown, or at the end of a test)."""
        with self._lock:
            sockets, self._open = self._open, []
        for pid, ipr in sockets:
            if pid == os.getpid():
                ipr.close()
        self._local = threading.local()

    def _held(self) -> dict[str | None, tuple[IPRoute, int, int | None]]:
        local = self._local
        # a socket inherited across fork belongs to the parent: never reuse it
        if getattr(local, "pid", None) != os.getpid():
            local.pid, local.held = os.getpid(), {}
        return local.held

    def _discard(self, ipr: IPRoute) -> None:
        with self._lock:
            if (os.getpid(), ipr) in self._open:
                self._open.remove((os.getpid(), ipr))
        ipr.close()


class PacketSockets:
    """One raw AF_PACKET socket per namespace, shared by all threads (sendto is atomic per frame). Long-
    lived: closing a packet socket waits for an RCU grace period (packet_release calls synchronize_net),
    ~16 ms on the lab's VM, which Join would pay on every announcement with a socket per frame. Bound to no
    protocol, it receives, and queues, nothing."""

    def __init__(self) -> None:
        self._sockets: dict[str | None, tuple[socket.socket, int | None]] = {}
        self._lock = threading.Lock()

    def send(self, netns: str | None, ifname: str, frame: bytes) -> None:
        """Send one Ethernet frame out of ifname in netns (None: the current namespace)."""
        sock = self._socket(netns)
        sock.sendto(frame, (ifname, int.from_bytes(frame[12:14], "big")))  # the frame's EtherType

    def drop(self, netns: str) -> None:
        with self._lock:
            entry = self._sockets.pop(netns, None)
        if entry is not None:
            entry[0].close()

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, {}
        for sock, _ in sockets.values():
            sock.close()

    def _socket(self, netns: str | None) -> socket.socket:
        current = identity(netns) if netns is not None and "/" in netns else None
        with self._lock:
            entry = self._sockets.get(netns)
            if entry is not None and entry[1] == current:
                return entry[0]
            if entry is not None:
                entry[0].close()
            if netns is None:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            else:
                # flags=0: fail on a missing namespace instead of creating it
                sock = create_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, 0, flags=0)
            self._sockets[netns] = (sock, current)
            return sock
