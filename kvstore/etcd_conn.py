"""The etcd connection: lazy clients per endpoint, failover, and one mapping of every grpc/etcd3 error
to StoreUnavailable (or Compacted). Knows nothing about pyoverlay's keys; kv_etcd.py builds on it.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar
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

from .model import Compacted, StoreUnavailable

T = TypeVar("T")

_GRPC_OPTIONS = [
    # Notice a silently dead peer on a long watch (etcd allows pings every 5 s or more).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # Be back within half a second of etcd returning; the default backoff grows to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 500),
    # gRPC also takes this as the least time a TCP connect may take (its deadline is the larger of it and
    # the backoff): at 200 ms a SYN lost once (resent after 1 s), a far etcd or a busy host's late poll
    # failed a connect to a healthy etcd ("connect() timed out", seen in the lab). A refused connect
    # (etcd down, the port closed) still fails at once.
    ("grpc.min_reconnect_backoff_ms", 2_000),
    # An operator's view of every endpoint (pyoverlay hosts, forget-host) outgrows gRPC's 4 MiB default
    # at about 8,000 endpoints; a host's own scopes stay far below it.
    ("grpc.max_receive_message_length", 256 * 2**20),
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
        if (cert_cert is None) != (cert_key is None):  # grpc aborts the whole process on half a pair
            raise ValueError("an etcd client certificate and its key go together: give both or neither")
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
        _check_pem(*self._tls)
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def _tls_cause(self, details: str) -> str | None:
        """What a failed TLS handshake means, in the operator's terms (grpc only says "Unwrap failed")."""
        ca, key, cert = self._tls
        if "CERTIFICATE_VERIFY_FAILED" in details or "Peer name" in details:
            trusted = f"the CA in {ca}" if ca else "the system's CAs (no etcd CA certificate is set)"
            return f"TLS: etcd's server certificate is not signed by {trusted}, or does not name this address"
        if any(sign in details for sign in _CLIENT_CERT_REFUSED):
            if cert is None:
                return "TLS: etcd requires a client certificate (--client-cert-auth) and none is set"
            return (
                f"TLS: etcd refused the client certificate {cert}: not signed by a CA etcd trusts "
                "(its --trusted-ca-file), or expired"
            )
        return None

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
                why = describe(exc)
                if not _is_connection_error(exc):  # etcd answered no: another member would say the same
                    if "PERMISSION_DENIED" in why:
                        why += (
                            f" (the etcd user named by the client certificate's CN needs readwrite on "
                            f"the prefix {_PREFIX} only: docs/install.md)"
                        )
                    raise StoreUnavailable(f"etcd at {member.url} refused the request: {why}") from exc
                if member.secure:
                    why = self._tls_cause(why) or why
                failures.append((member.url, why))
                self._current = (index + 1) % len(self._members)
        if len(failures) == 1:
            raise StoreUnavailable(f"etcd at {failures[0][0]} is unreachable: {failures[0][1]}")
        detail = "; ".join(f"{url}: {why}" for url, why in failures)
        raise StoreUnavailable(f"etcd at {self.urls} is unreachable: {detail}")

    def close(self) -> None:
        with self._lock:
            for member in self._members:
                if member.client is not None:
                    member.client.close()
                    member.client = None


_PREFIX = "/pyoverlay/"  # every key pyoverlay reads or writes (keys.py), for the operator's hint
# How grpc reports a handshake the server ended with an alert about our certificate: TLS 1.3 sends the
# alert after the client finished, so grpc sees only a record it cannot decrypt.
_CLIENT_CERT_REFUSED = ("TSI_DATA_CORRUPTED", "Unwrap failed", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED")


def _check_pem(ca: str | None, key: str | None, cert: str | None) -> None:
    """Refuse unreadable PEM files, or a key that is not the certificate's, naming the file: grpc
    reports all of these only as "Failed to create security handshaker"."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if ca is not None:
            context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise StoreUnavailable(
            f"etcd CA certificate {ca} is not a PEM certificate: {exc.reason or exc}"
        ) from exc
    try:
        if cert is not None:
            context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise StoreUnavailable(
            f"etcd client certificate {cert} and key {key} are not a PEM certificate and its own key: "
            f"{exc.reason or exc}"
        ) from exc


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


__all__ = ["EtcdConnection", "describe"]
