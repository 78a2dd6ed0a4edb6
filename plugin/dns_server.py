"""The host's name service: a DNS server on one address of this host (the daemon's `dns` setting names
it), over UDP and TCP. Docker's embedded DNS (127.0.0.11 in every container) answers its own host's
names and forwards the rest here, from inside the asking container; this server answers the names of
the asker's networks on every host (dns_answers) and forwards everything else to the host's resolvers."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.resolver

from .dns_answers import answer, failure
from .names import Askers, NameIndex

log = logging.getLogger(__name__)

RESOLV_CONF = "/etc/resolv.conf"
UPSTREAM_TIMEOUT = 3.0  # per upstream server; Docker's embedded DNS waits up to 4 s per server
TCP_IDLE = 10.0  # seconds a TCP connection may wait for its next question
REFRESH_WAIT = 0.5  # how long a question from an unknown address waits for Docker sync to learn it
STRANGER_SECONDS = 10.0  # and how long after that its questions are forwarded without waiting


class Upstreams:
    """The resolvers questions that are not ours go to: the configured list, else the host's
    resolv.conf (read again when it changes), never this server itself."""

    def __init__(self, configured: tuple[str, ...], own_address: str, resolv_conf: str = RESOLV_CONF):
        self.configured = [split_server(s) for s in configured]  # "address" or "address:port"
        self.own_address = own_address
        self.resolv_conf = resolv_conf
        self._seen: tuple[float, list[tuple[str, int]]] = (-1.0, [])

    def servers(self) -> list[tuple[str, int]]:
        if self.configured:
            return [s for s in self.configured if s != (self.own_address, 53)]
        try:
            mtime = os.stat(self.resolv_conf).st_mtime
        except OSError:
            return []
        if mtime != self._seen[0]:
            try:
                found = dns.resolver.Resolver(filename=self.resolv_conf).nameservers
            except (dns.resolver.NoResolverConfiguration, OSError):
                found = []
            self._seen = (mtime, [(str(s), 53) for s in found if str(s) != self.own_address])
        return self._seen[1]


def split_server(server: str) -> tuple[str, int]:
    address, _, port = server.partition(":")
    return address, int(port or 53)


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
        self.refresh = refresh  # asks Docker sync to learn the containers now
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dns")
        self._udp: socket.socket | None = None
        self._strangers: dict[str, float] = {}  # source -> until when it is known not to be a container
        self._cache = AnswerCache(index)
        self._tcp: socket.socket | None = None

    def bind(self) -> None:
        """Bind both sockets now, so that a failure is reported by the caller (port taken, no address)."""
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._udp.bind((self.address, self.port))
            self.port = self._udp.getsockname()[1]  # a test binds port 0: TCP takes the same
            self._tcp.bind((self.address, self.port))
        except OSError:
            self.close()
            raise
        self._tcp.listen(64)

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
                continue
            self._pool.submit(self._reply_udp, udp, wire, client)

    def close(self) -> None:
        for sock in (self._udp, self._tcp):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- questions ----------------------------------------------------------------------------------
    def resolve(self, query: dns.message.Message, source: str, tcp: bool) -> dns.message.Message:
        """The response to one question from ``source``: ours, else an upstream's."""
        response = answer(query, self._networks_of(source), self.index)
        return response if response is not None else self._forward(query, tcp)

    def _resolve_udp(self, wire: bytes, source: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not a question
        generation = self.index.generation  # before the answer: a change meanwhile is not cached
        networks = self._networks_of(source)
        response = answer(query, networks, self.index)
        if response is None:
            return _udp_wire(query, self._forward(query, tcp=False))
        rendered = _udp_wire(query, response)
        self._cache.put(networks, wire, rendered, generation)
        return rendered

    def _networks_of(self, source: str) -> frozenset[str] | None:
        networks = self.askers.networks(source)
        if networks is not None or source == self.address:  # the host itself (--network host)
            return networks
        if time.monotonic() < self._strangers.get(source, 0.0):
            return None
        # A container that started a moment ago, which Docker sync has not seen yet
        self.refresh()
        if self.askers.wait_for_update(REFRESH_WAIT):
            networks = self.askers.networks(source)
        if networks is None:  # not a container of this host: do not wait for it again soon
            self._strangers[source] = time.monotonic() + STRANGER_SECONDS
        return networks

    def _forward(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        for address, port in self.upstreams.servers():
            try:
                if tcp:
                    return dns.query.tcp(query, address, timeout=UPSTREAM_TIMEOUT, port=port)
                return dns.query.udp(
                    query, address, timeout=UPSTREAM_TIMEOUT, port=port, ignore_unexpected=True
                )
            except (dns.exception.DNSException, OSError) as exc:
                log.debug("upstream %s:%d: %s", address, port, exc)
        return failure(query)

    def _reply_udp(self, udp: socket.socket, wire: bytes, client: tuple[str, int]) -> None:
        try:
            response = self._resolve_udp(wire, client[0])
            if response is not None:
                udp.sendto(response, client)
        except Exception:  # one bad question never stops the server
            log.exception("dns: question from %s", client[0])

    def _serve_tcp(self, stop: threading.Event) -> None:
        assert self._tcp is not None
        while not stop.is_set():
            try:
                conn, client = self._tcp.accept()
            except OSError:
                return  # closed
            self._pool.submit(self._reply_tcp, conn, client[0])

    def _reply_tcp(self, conn: socket.socket, source: str) -> None:
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


class AnswerCache:
    """Our UDP answers as sent, by the asker's networks and the question's bytes after its ID, until
    the names change: the same question again is answered without parsing or rendering."""

    def __init__(self, index: NameIndex, size: int = 10_000) -> None:
        self.index = index
        self.size = size
        self._entries: dict[tuple[frozenset[str], bytes], bytes] = {}
        self._generation = -1

    def get(self, networks: frozenset[str] | None, wire: bytes) -> bytes | None:
        if not networks or len(wire) < 12 or self._generation != self.index.generation:
            return None
        cached = self._entries.get((networks, wire[2:]))
        return None if cached is None else wire[:2] + cached[2:]  # the asker's ID

    def put(self, networks: frozenset[str] | None, wire: bytes, response: bytes, generation: int) -> None:
        if not networks:
            return
        if generation != self._generation or len(self._entries) >= self.size:
            self._entries = {}
            self._generation = generation
        if generation == self.index.generation:
            self._entries[(networks, wire[2:])] = response


def _udp_wire(query: dns.message.Message, response: dns.message.Message) -> bytes:
    """The response as UDP carries it to this client: within its EDNS payload size (else 512 bytes),
    or truncated so that it asks again over TCP."""
    size = max(512, query.payload) if query.edns >= 0 else 512
    try:
        return response.to_wire(max_size=size)
    except dns.exception.TooBig:
        response.flags |= dns.flags.TC
        for section in (response.answer, response.authority, response.additional):
            section.clear()
        return response.to_wire(max_size=size)
