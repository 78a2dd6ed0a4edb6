"""The host's name service: a DNS server on one address of this host (the daemon's `dns` setting names
it), over UDP and TCP. Docker's embedded DNS (127.0.0.11 in every container) answers its own host's
names and forwards the rest here, from inside the asking container; this server answers the names of
the asker's networks on every host (answers) and forwards everything else to the host's resolvers
(upstreams). It serves this host's containers and the host itself, no one else."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import dns.exception
import dns.flags
import dns.message
import dns.query

from .answers import answer, refused
from .cache import AnswerCache
from .index import Askers, NameIndex
from .upstreams import Upstreams

log = logging.getLogger(__name__)

TCP_IDLE = 2.0  # seconds a TCP connection may wait for its next question
MAX_TCP = 32  # connections served at once; more wait in the kernel's backlog
MAX_IN_FLIGHT = 100  # UDP questions being answered or forwarded at once; more are dropped, as Docker does
REFRESH_WAIT = 0.5  # how long a question from an unknown address waits for Docker sync to learn it
STRANGER_SECONDS = 10.0  # then it is refused without waiting for this long
MAX_STRANGERS = 1000


class DnsServer:
    def __init__(
        self,
        address: str,
        port: int,
        index: NameIndex,
        askers: Askers,
        upstreams: Upstreams,
        refresh: Callable[[], None] = lambda: None,
    ) -> None:
        self.address, self.port = address, port
        self.index = index
        self.askers = askers
        self.upstreams = upstreams
        self.refresh = refresh  # asks Docker sync for a pass now
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dns")
        self._in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._tcp_slots = threading.BoundedSemaphore(MAX_TCP)
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._strangers: dict[str, float] = {}  # source -> until when it is known not to be a container
        self._cache = AnswerCache(index)
        self._closing = False

    def bind(self) -> None:
        """Bind both sockets now, so that a failure is reported by the caller (port taken, no address)."""
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            udp.bind((self.address, self.port))
            port = udp.getsockname()[1]  # a test binds port 0: TCP takes the same
            tcp.bind((self.address, port))
            tcp.listen(64)
        except OSError:
            udp.close()
            tcp.close()
            raise
        self._udp, self._tcp, self.port = udp, tcp, port

    def run(self, stop: threading.Event) -> None:
        """Serve until stop is set (then close() wakes the blocked threads)."""
        assert self._udp is not None and self._tcp is not None, "bind() first"
        threading.Thread(target=self._serve_tcp, args=(stop,), name="dns-tcp", daemon=True).start()
        udp = self._udp
        while not stop.is_set():
            try:
                wire, client = udp.recvfrom(65535)
            except OSError:
                return  # closed
            if client is None:
                return  # shut down by close()
            cached = self._cache.get(self.askers.networks(client[0]), wire)
            if cached is not None:  # the common question, answered on this thread: no hand-over
                with contextlib.suppress(OSError):
                    udp.sendto(cached, client)
            elif self._in_flight.acquire(blocking=False):
                self._pool.submit(self._reply_udp, udp, wire, client)
            # else dropped: the client asks again, as with any busy server

    def close(self) -> None:
        self._closing = True
        for sock in (self._udp, self._tcp):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- questions ----------------------------------------------------------------------------------
    def resolve(self, query: dns.message.Message, source: str, tcp: bool) -> dns.message.Message:
        """The response to one question from ``source``: ours, else an upstream's; REFUSED to a source
        that is neither a container of this host nor the host itself."""
        return self._respond(query, self._networks_of(source), source, tcp)[0]

    def _respond(
        self, query: dns.message.Message, networks: frozenset[str] | None, source: str, tcp: bool
    ) -> tuple[dns.message.Message, bool]:
        """(response, whether it is ours)."""
        if networks is None and source != self.address:
            return refused(query), False
        response = answer(query, networks, self.index)
        if response is None:
            return self.upstreams.forward(query, tcp), False
        return response, True

    def _networks_of(self, source: str) -> frozenset[str] | None:
        networks = self.askers.networks(source)
        if networks is not None or source == self.address:  # the host itself (--network host)
            return networks
        now = time.monotonic()
        if now < self._strangers.get(source, 0.0):
            return None
        # A container that started a moment ago, which Docker sync has not seen yet: wait for a pass
        # that begins after this question
        ticket = self.askers.ask()
        self.refresh()
        if self.askers.wait_for(ticket, REFRESH_WAIT):
            networks = self.askers.networks(source)
        if networks is None:
            if len(self._strangers) >= MAX_STRANGERS:
                self._strangers = {s: t for s, t in self._strangers.items() if t > now}
            self._strangers[source] = time.monotonic() + STRANGER_SECONDS
        return networks

    def _resolve_udp(self, wire: bytes, source: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not a question
        generation = self.index.generation  # before the answer: a change meanwhile is not cached
        networks = self._networks_of(source)
        response, ours = self._respond(query, networks, source, tcp=False)
        rendered = _udp_wire(query, response)
        if ours and len(response.answer) == 1 and len(response.answer[0]) == 1:  # several: shuffled
            self._cache.put(networks, wire, rendered, generation)
        return rendered

    def _reply_udp(self, udp: socket.socket, wire: bytes, client: tuple[str, int]) -> None:
        try:
            response = self._resolve_udp(wire, client[0])
            if response is not None:
                udp.sendto(response, client)
        except OSError:
            if not self._closing:
                log.exception("dns: question from %s", client[0])
        except Exception:  # one bad question never stops the server
            log.exception("dns: question from %s", client[0])
        finally:
            self._in_flight.release()

    def _serve_tcp(self, stop: threading.Event) -> None:
        assert self._tcp is not None
        while not stop.is_set():
            self._tcp_slots.acquire()
            try:
                conn, client = self._tcp.accept()
            except OSError:
                self._tcp_slots.release()
                return  # closed
            threading.Thread(target=self._reply_tcp, args=(conn, client[0]), daemon=True).start()

    def _reply_tcp(self, conn: socket.socket, source: str) -> None:
        """Its own thread, one of at most MAX_TCP: a slow TCP client never holds up UDP questions."""
        with conn:
            try:
                while True:  # a client may send several questions on one connection
                    expiration = time.time() + TCP_IDLE
                    query, _ = dns.query.receive_tcp(conn, expiration)
                    dns.query.send_tcp(conn, self.resolve(query, source, tcp=True), expiration)
            except (EOFError, OSError, dns.exception.DNSException):
                return  # closed, idle or garbage
            except Exception:
                log.exception("dns: tcp question from %s", source)
            finally:
                self._tcp_slots.release()


def _udp_wire(query: dns.message.Message, response: dns.message.Message) -> bytes:
    """The response as UDP carries it to this client: within its EDNS payload size (else 512 bytes),
    or truncated so that it asks again over TCP."""
    size = max(512, query.payload) if query.edns >= 0 else 512
    try:
        return response.to_wire(max_size=size)
    except dns.exception.TooBig:
        truncated = dns.message.make_response(query)
        truncated.flags = response.flags | dns.flags.TC
        truncated.set_rcode(response.rcode())
        return truncated.to_wire(max_size=size)
