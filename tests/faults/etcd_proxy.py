"""A TCP proxy in front of the lab's etcd that a test can cut: every open connection is closed and new ones
are refused (the listening socket is closed) for a while, as a partition or a crashed load balancer would.

It runs in the test process, with its sockets in the lab's underlay namespace: the thread that makes them
enters that namespace first (setns(2) moves only the calling thread), so agents on every host reach it at
the underlay address, beside etcd. Bytes are copied by two threads per connection."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import threading
import time

CLONE_NEWNET = 0x40000000


def _enter_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


class EtcdProxy:
    """``EtcdProxy(netns_path, listen=(addr, port), upstream=(addr, port))``; ``endpoint`` for
    ETCD_ENDPOINTS; ``cut(seconds)`` (``math.inf``: until ``heal()``); ``close()``."""

    def __init__(self, netns_path: str, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.netns_path, self.listen, self.upstream = netns_path, listen, upstream
        self.cuts = 0
        self.connections = 0  # accepted so far
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._refuse_until = 0.0
        self._listening: socket.socket | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="etcd-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    @property
    def endpoint(self) -> str:
        return f"http://{self.listen[0]}:{self.listen[1]}"

    def cut(self, seconds: float) -> None:
        """Close every open connection now and refuse new ones for ``seconds``."""
        with self._lock:
            self._refuse_until = time.monotonic() + seconds
            self.cuts += 1
            sockets, self._open = self._open, set()
            listener, self._listening = self._listening, None
        if listener is not None:
            # refused, not merely unanswered: connect() fails at once. shutdown first: a close() alone
            # waits for the serving thread's select() to let go of the socket, and it listens till then
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def heal(self) -> None:
        """Accept connections again now (within the serving loop's 50 ms poll)."""
        with self._lock:
            self._refuse_until = 0.0

    def close(self) -> None:
        self._stop.set()
        self.cut(0)
        self._thread.join(5)

    # -- the thread that lives in the underlay namespace: it makes every socket ----------------------
    def _listener(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(self.listen)
        s.listen(64)
        return s

    def _serve(self) -> None:
        try:
            _enter_netns(self.netns_path)
            self._listening = self._listener()
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        while not self._stop.is_set():
            with self._lock:
                if self._listening is None and time.monotonic() >= self._refuse_until:
                    self._listening = self._listener()
                listener = self._listening
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                if not select.select([listener], [], [], 0.1)[0]:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):  # closed by cut() meanwhile
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self.connections += 1
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()
        with self._lock:
            if self._listening is not None:
                self._listening.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):  # one side gone: the connection is over in both directions
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            src.close()  # the other pump closes dst
