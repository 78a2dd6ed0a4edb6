"""The etcd connection: lazy clients per endpoint, failover, and one mapping of every grpc/etcd3 error
to StoreUnavailable (or Compacted). Knows nothing about pyoverlay's keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd3
import grpc
from etcd3.exceptions import (
    ConnectionFailedError,
    ConnectionTimeoutError,
    Etcd3Exception,
    RevisionCompactedError,
    WatchTimedOut,
)
from etcd3.utils import prefix_range_end

from .model import Compacted, StoreUnavailable

T = TypeVar("T")
Kv = tuple[dict[str, Any], Any]  # decoded JSON value, etcd3 KVMetadata

OPS = etcd3.Transactions()  # stateless builders: OPS.version(key) == 0, OPS.put(key, value), …

_GRPC_OPTIONS = [
    # Notice a silently dead peer on a long watch (etcd allows pings every 5 s or more).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # Be back within a second of etcd returning; the default backoff grows to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


class _Member:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"etcd endpoint {url!r} is not a URL like http://10.0.0.1:2379")
        self.url = url
        self.host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self.port = parts.port or 2379
        self.secure = parts.scheme == "https"
        self.client: etcd3.MultiEndpointEtcd3Client | None = None


class EtcdConnection:
    """Endpoints are tried in turn; the first call opens the channel (the constructor does no I/O)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        ca_cert: str | None = None,
        cert_key: str | None = None,
        cert_cert: str | None = None,
        timeout: float = 5,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self._members = [_Member(u.strip()) for u in endpoints]
        self._tls = (ca_cert, cert_key, cert_cert)
        self.timeout = timeout
        self._current = 0
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def urls(self) -> str:
        return ", ".join(m.url for m in self._members)

    def _client(self, member: _Member) -> etcd3.MultiEndpointEtcd3Client:
        with self._lock:
            if os.getpid() != self._pid:  # grpc channels do not survive a fork: start afresh
                self._pid = os.getpid()
                for each in self._members:
                    each.client = None
            if member.client is None:
                creds = self._credentials() if member.secure else None
                # time_retry=0: the fork otherwise refuses an endpoint for 300 s after one failure;
                # failover across endpoints is done here instead.
                endpoint = etcd3.Endpoint(
                    member.host, member.port, member.secure, creds, time_retry=0, opts=_GRPC_OPTIONS
                )
                member.client = etcd3.MultiEndpointEtcd3Client([endpoint], timeout=self.timeout)
            return member.client

    def _credentials(self) -> grpc.ChannelCredentials:
        ca, key, cert = (self._read_file(p) for p in self._tls)
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    @staticmethod
    def _read_file(path: str | None) -> bytes | None:
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise StoreUnavailable(f"cannot read etcd TLS file {path}: {exc.strerror}") from exc

    def call(self, fn: Callable[[etcd3.MultiEndpointEtcd3Client], T]) -> T:
        """Run ``fn(client)`` on the current endpoint, then on each other one if it fails."""
        failures = []
        start = self._current
        for i in range(len(self._members)):
            index = (start + i) % len(self._members)
            member = self._members[index]
            try:
                return fn(self._client(member))
            except RevisionCompactedError as exc:
                raise Compacted(f"revision {exc.compacted_revision} and older are compacted") from exc
            except (Etcd3Exception, grpc.RpcError) as exc:
                if not _is_connection_error(exc):  # etcd answered no: another member would say the same
                    why = describe(exc)
                    raise StoreUnavailable(f"etcd at {member.url} refused the request: {why}") from exc
                failures.append((member.url, describe(exc)))
                self._current = (index + 1) % len(self._members)
        if len(failures) == 1:
            raise StoreUnavailable(f"etcd at {failures[0][0]} is unreachable: {failures[0][1]}")
        detail = "; ".join(f"{url}: {why}" for url, why in failures)
        raise StoreUnavailable(f"etcd at {self.urls} is unreachable: {detail}")

    # -- reads --------------------------------------------------------------------------------------
    def get(self, *keys: str) -> list[Kv | None]:
        """Several keys read at one revision (one round trip)."""
        _, responses = self.call(
            lambda c: c.transaction(compare=[], success=[OPS.get(k) for k in keys], failure=[])
        )
        return [_decode(r[0]) if r else None for r in responses]

    def prefix(self, prefix: str, keys_only: bool = False) -> tuple[list[tuple[str, Kv]], int]:
        """Every key under ``prefix`` (key order) and the revision of the read."""
        response = self.call(lambda c: c.get_prefix_response(prefix, keys_only=keys_only))
        items = [(kv.key.decode(), (json.loads(kv.value) if kv.value else {}, kv)) for kv in response.kvs]
        return items, response.header.revision

    def txn(self, compare: list[Any], success: list[Any], failure: Sequence[Any] = ()) -> tuple[bool, list]:
        ok, responses = self.call(
            lambda c: c.transaction(compare=compare, success=success, failure=list(failure))
        )
        return ok, [[_decode(kv) for kv in r] if isinstance(r, list) else r for r in responses]

    # -- leases -------------------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        return self.call(lambda c: c.lease(ttl)).id

    def keepalive(self, lease_id: int) -> bool:
        """Refresh the lease; False if it already expired."""
        responses = self.call(lambda c: list(c.refresh_lease(lease_id)))
        return bool(responses) and responses[-1].TTL > 0

    # -- watch --------------------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int, timeout: float | None) -> Iterator[Any]:
        """etcd3 events under ``prefix`` from ``start_revision``; ends after ``timeout`` s of silence.
        The server-side watch is cancelled when the iterator ends, fails or is closed."""
        responses: queue.Queue[Any] = queue.Queue()

        def open_watch(client: etcd3.MultiEndpointEtcd3Client) -> tuple[Any, int]:
            return client, client.add_watch_prefix_callback(
                prefix, responses.put, start_revision=start_revision
            )

        client, watch_id = self.call(open_watch)
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    item = responses.get(
                        timeout=None if deadline is None else max(0, deadline - time.monotonic())
                    )
                except queue.Empty:
                    return
                if isinstance(item, RevisionCompactedError):
                    raise Compacted(
                        f"revision {start_revision} is compacted (oldest kept: {item.compacted_revision})"
                    )
                if item is None or isinstance(item, BaseException):
                    why = describe(item) if item is not None else "watch stream closed"
                    raise StoreUnavailable(f"etcd at {self.urls} is unreachable: watch lost: {why}")
                yield from item.events
                if item.events and timeout is not None:
                    deadline = time.monotonic() + timeout
        finally:
            # Fails only if the stream is already gone, and then there is nothing left to cancel.
            with contextlib.suppress(Exception):
                client.cancel_watch(watch_id)

    def close(self) -> None:
        with self._lock:
            for member in self._members:
                if member.client is not None:
                    member.client.close()
                    member.client = None


def _decode(item: tuple[bytes, Any]) -> Kv:
    value, meta = item
    return (json.loads(value) if value else {}), meta


_CONNECTION_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}


def _is_connection_error(exc: BaseException) -> bool:
    for err in (exc, exc.__context__):
        if isinstance(err, grpc.RpcError) and hasattr(err, "code"):
            return err.code() in _CONNECTION_CODES
    return isinstance(exc, ConnectionFailedError | ConnectionTimeoutError | WatchTimedOut)


def describe(exc: BaseException) -> str:
    """The useful part of a grpc/etcd3 error (the fork drops grpc's details from its own exceptions)."""
    for err in (exc, exc.__context__, exc.__cause__):
        if isinstance(err, grpc.RpcError) and hasattr(err, "details"):
            code = err.code().name if hasattr(err, "code") else "ERROR"
            return f"{code}: {err.details()}"
    return str(exc) or type(exc).__name__


__all__ = ["OPS", "EtcdConnection", "describe", "prefix_range_end"]
