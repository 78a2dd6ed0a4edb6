"""The key-value primitive on etcd v3: a thin layer over EtcdConnection (failover, retries, TLS, error
mapping). All watches of one client share one gRPC stream; each is created once and lives until it is
cancelled or the stream fails."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import etcd3
import grpc
from etcd3.events import DeleteEvent
from etcd3.exceptions import RevisionCompactedError
from etcd3.utils import prefix_range_end

from .etcd_conn import EtcdConnection, describe
from .kv import Change, Compare, Item, KeyValue, Op, Put, Watch, WatchSink
from .model import Compacted, StoreUnavailable

_OPS = etcd3.Transactions()  # stateless builders
_TARGETS = {"value": _OPS.value, "version": _OPS.version, "create": _OPS.create, "mod": _OPS.mod}


def _end(key: str) -> bytes:
    return prefix_range_end(key.encode())


def _item(kv: Any, keys_only: bool = False) -> Item:
    return Item(
        key=kv.key.decode(),
        value="" if keys_only else kv.value.decode(),
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def _compare(c: Compare) -> Any:
    target = _TARGETS[c.target](c.key, _end(c.key)) if c.prefix else _TARGETS[c.target](c.key)
    return {"==": target.__eq__, "!=": target.__ne__, "<": target.__lt__, ">": target.__gt__}[c.op](c.value)


def _op(op: Op) -> Any:
    if isinstance(op, Put):
        return _OPS.put(op.key, op.value, lease=op.lease or None)
    return _OPS.delete(op.key, range_end=_end(op.key)) if op.prefix else _OPS.delete(op.key)


class EtcdKV(KeyValue):
    def __init__(self, conn: EtcdConnection) -> None:
        self.conn = conn

    def get(self, *keys: str) -> list[Item | None]:
        def read(client: Any) -> list[Item | None]:
            # one transaction of gets: one revision for all keys
            _, responses = client.transaction(compare=[], success=[_OPS.get(k) for k in keys], failure=[])
            return [_meta_item(r[0]) if r else None for r in responses]

        return self.conn.call(read)

    def range(self, prefix: str, keys_only: bool = False) -> tuple[list[Item], int]:
        response = self.conn.call(lambda c: c.get_prefix_response(prefix, keys_only=keys_only))
        return [_item(kv, keys_only) for kv in response.kvs], response.header.revision

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> bool:
        compare = [_compare(c) for c in compares]
        success = [_op(op) for op in ops]
        ok, _ = self.conn.call(lambda c: c.transaction(compare=compare, success=success, failure=[]))
        return bool(ok)

    def grant(self, ttl: int) -> int:
        return self.conn.call(lambda c: c.lease(ttl)).id

    def keepalive(self, lease: int) -> bool:
        responses = self.conn.call(lambda c: list(c.refresh_lease(lease)))
        return bool(responses) and responses[-1].TTL > 0

    def watch(self, prefix: str, start_revision: int, sink: WatchSink) -> Watch:
        watch = _EtcdWatch(sink, self.conn.urls)

        def open_watch(client: Any) -> tuple[Any, int]:
            _require_revision(client, prefix, start_revision)
            return client, client.add_watch_prefix_callback(
                prefix, watch.deliver, start_revision=start_revision
            )

        watch.client, watch.watch_id = self.conn.call(open_watch)
        return watch

    def close(self) -> None:
        self.conn.close()


def _require_revision(client: Any, prefix: str, revision: int) -> None:
    """Raise Compacted if ``revision`` is compacted: etcd tells a new watch so only later, in its
    stream, while a read at that revision fails at once (a future revision is fine)."""
    if revision <= 0:
        return
    try:
        client.get_prefix_response(prefix, revision=revision, count_only=True)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
            raise
        if "compacted" in (exc.details() or ""):  # otherwise a future revision: nothing to check yet
            raise Compacted(f"revision {revision} is compacted") from exc


def _meta_item(entry: tuple[bytes, Any]) -> Item:
    value, meta = entry
    return Item(
        key=meta.key.decode(),
        value=value.decode(),
        create_revision=meta.create_revision,
        mod_revision=meta.mod_revision,
        version=meta.version,
        lease=meta.lease_id,
    )


class _EtcdWatch(Watch):
    def __init__(self, sink: WatchSink, urls: str) -> None:
        self._sink = sink
        self._urls = urls
        # cancel() waits for a delivery in progress: none after it returns. Reentrant: the sink may cancel.
        self._lock = threading.RLock()
        self._done = False
        self.client: Any = None
        self.watch_id: int | None = None

    def deliver(self, response: Any) -> None:
        """The etcd3 watcher thread's callback: a WatchResponse, or the error that ended the stream."""
        with self._lock:
            if self._done:
                return
            if isinstance(response, RevisionCompactedError):
                self._done = True
                self._sink(Compacted(f"revisions before {response.compacted_revision} are compacted"))
            elif response is None or isinstance(response, BaseException):
                self._done = True
                why = describe(response) if response is not None else "watch stream closed"
                self._sink(StoreUnavailable(f"etcd at {self._urls} is unreachable: watch lost: {why}"))
            elif response.events:
                self._sink([_change(event) for event in response.events])

    def cancel(self) -> None:
        with self._lock:
            self._done = True
        if self.client is not None and self.watch_id is not None:
            # Fails only if the stream is already gone, and then there is nothing left to cancel.
            with contextlib.suppress(Exception):
                self.client.cancel_watch(self.watch_id)
            self.watch_id = None


def _change(event: Any) -> Change:
    deleted = isinstance(event, DeleteEvent)
    return Change(event.key.decode(), None if deleted else event.value.decode(), event.mod_revision)
