"""The key-value primitive embedded: one SQLite file in the agent's state directory (or a database in
memory, for tests). Single host, durable across restarts.

One table of keys with their create/mod revisions and versions, a bounded log of changes the watches
read from, and leases that expire by wall-clock time. One connection guarded by a lock serves every
thread; writes run in ``BEGIN IMMEDIATE`` so a second process on the same file (the CLI) serialises
through SQLite's own lock. One dispatcher thread feeds every watch: woken by this process's commits,
and polling the file four times a second for another process's.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .kv import Change, Compare, Delete, Item, KeyValue, Op, Put, Watch, WatchSink, prefix_end
from .model import Compacted, InvalidRequest, StoreUnavailable

log = logging.getLogger(__name__)

FILE_NAME = "store.db"
_POLL = 0.25  # how soon a write by another process (the CLI) reaches the watches
_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease != 0;
-- AUTOINCREMENT: an expired lease's id is never granted again (its holder's keepalive stays False)
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ttl INTEGER NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, revision INTEGER NOT NULL, key TEXT NOT NULL, value TEXT);
CREATE INDEX IF NOT EXISTS changes_by_revision ON changes (revision);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compacted', 0);
"""
_COLUMNS = {"value": "value", "version": "version", "create": "create_revision", "mod": "mod_revision"}
_OPS = {"==": "=", "!=": "!=", "<": "<", ">": ">"}


class SqliteKV(KeyValue):
    def __init__(self, state_dir: str | None, change_log_size: int = 10_000) -> None:
        """``state_dir`` None: a database in memory, gone with the object."""
        if state_dir is not None:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
        self.path = str(Path(state_dir) / FILE_NAME) if state_dir is not None else ":memory:"
        self._log_size = change_log_size
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._watches: dict[int, _SqliteWatch] = {}
        self._ids = itertools.count(1)
        self._dispatcher: threading.Thread | None = None
        self._closed = False
        self._connect()

    def _connect(self) -> None:
        self._pid = os.getpid()
        try:
            self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state database {self.path} is unavailable: {exc}") from exc

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if os.getpid() != self._pid and self.path != ":memory:":  # opened before a fork: reconnect
                self._connect()
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreUnavailable(f"state database {self.path} is unavailable: {exc}") from exc
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            if write:
                self._changed.notify_all()

    @staticmethod
    def _revision(db: sqlite3.Connection) -> int:
        return db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]

    def _expire_leases(self) -> None:
        """Delete the keys of expired leases, as etcd does when a lease runs out (delete events)."""
        now = time.time()
        with self._lock:
            with self._tx() as db:
                if db.execute("SELECT 1 FROM leases WHERE expires <= ? LIMIT 1", (now,)).fetchone() is None:
                    return
            with self._tx(write=True) as db:
                expired = [r[0] for r in db.execute("SELECT id FROM leases WHERE expires <= ?", (now,))]
                keys = [
                    r[0]
                    for lease in expired
                    for r in db.execute("SELECT key FROM kv WHERE lease = ?", (lease,)).fetchall()
                ]
                db.executemany("DELETE FROM leases WHERE id = ?", [(lease,) for lease in expired])
                self._apply(db, [Delete(key) for key in keys])

    # -- reads --------------------------------------------------------------------------------------
    def get(self, *keys: str) -> list[Item | None]:
        self._expire_leases()
        with self._tx() as db:
            return [_row_item(db.execute("SELECT * FROM kv WHERE key = ?", (k,)).fetchone()) for k in keys]

    def range(self, prefix: str, keys_only: bool = False) -> tuple[list[Item], int]:
        self._expire_leases()
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, prefix_end(prefix))
            ).fetchall()
            items = [_row_item(r, keys_only) for r in rows]
            return items, self._revision(db)  # type: ignore[return-value]

    # -- writes -------------------------------------------------------------------------------------
    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> bool:
        self._expire_leases()
        with self._tx(write=True) as db:
            if not all(_holds(db, c) for c in compares):
                return False
            for op in ops:
                if isinstance(op, Put) and op.lease and not _lease_alive(db, op.lease):
                    raise InvalidRequest(f"lease {op.lease} not found")
            self._apply(db, ops)
            return True

    def _apply(self, db: sqlite3.Connection, ops: Sequence[Op]) -> None:
        revision = self._revision(db) + 1
        changes: list[tuple[int, str, str | None]] = []
        for op in ops:
            if isinstance(op, Put):
                db.execute(
                    "INSERT INTO kv VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (key) DO UPDATE SET "
                    "value = excluded.value, mod_revision = excluded.mod_revision, version = version + 1, "
                    "lease = excluded.lease",
                    (op.key, op.value, revision, revision, op.lease),
                )
                changes.append((revision, op.key, op.value))
            else:
                where, args = (
                    ("key >= ? AND key < ?", (op.key, prefix_end(op.key)))
                    if op.prefix
                    else (
                        "key = ?",
                        (op.key,),
                    )
                )
                gone = [r[0] for r in db.execute(f"SELECT key FROM kv WHERE {where}", args).fetchall()]
                db.execute(f"DELETE FROM kv WHERE {where}", args)
                changes += [(revision, key, None) for key in gone]
        if not changes:  # nothing changed (deletes of absent keys): no new revision, as in etcd
            return
        db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
        db.executemany("INSERT INTO changes (revision, key, value) VALUES (?, ?, ?)", changes)
        last = db.execute("SELECT MAX(seq) FROM changes").fetchone()[0]
        if last % 100 < len(changes) or len(changes) >= 100:  # prune in batches: a bounded log
            cut = db.execute(
                "SELECT MAX(revision) FROM changes WHERE seq <= ?", (last - self._log_size,)
            ).fetchone()[0]
            if cut is not None:
                db.execute("DELETE FROM changes WHERE revision <= ?", (cut,))
                db.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'compacted'", (cut,))

    # -- leases -------------------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        with self._tx(write=True) as db:
            cursor = db.execute("INSERT INTO leases (ttl, expires) VALUES (?, ?)", (ttl, time.time() + ttl))
            return int(cursor.lastrowid or 0)

    def keepalive(self, lease: int) -> bool:
        self._expire_leases()
        with self._tx(write=True) as db:
            updated = db.execute(
                "UPDATE leases SET expires = ? + ttl WHERE id = ?", (time.time(), lease)
            ).rowcount
            return updated > 0

    # -- watches ------------------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int, sink: WatchSink) -> Watch:
        with self._tx() as db:
            compacted = _compacted(db)
            if start_revision <= compacted:
                raise Compacted(f"revision {start_revision} is compacted (oldest kept: {compacted + 1})")
            watch = _SqliteWatch(self, next(self._ids), prefix, start_revision, sink)
            self._watches[watch.watch_id] = watch
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name="kv-watch", daemon=True)
                self._dispatcher.start()
            self._changed.notify_all()
        return watch

    def _dispatch(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                batches = []
                try:
                    self._expire_leases()  # a watch sees an expiry even when nothing else calls the store
                    with self._tx() as db:
                        compacted = _compacted(db)
                        for watch in list(self._watches.values()):
                            batches.append((watch, watch.read(db, compacted)))
                except StoreUnavailable as exc:
                    batches = [(watch, exc) for watch in self._watches.values()]
                if not any(isinstance(b, Exception) or b for _, b in batches):
                    self._changed.wait(_POLL)
                    continue
            for watch, batch in batches:
                watch.deliver(batch)

    def _forget(self, watch_id: int) -> None:
        with self._lock:
            self._watches.pop(watch_id, None)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._watches.clear()
            self._changed.notify_all()
            self._db.close()


class _SqliteWatch(Watch):
    def __init__(self, kv: SqliteKV, watch_id: int, prefix: str, start: int, sink: WatchSink) -> None:
        self.kv, self.watch_id, self.prefix, self.next_revision, self.sink = kv, watch_id, prefix, start, sink
        self._lock = threading.RLock()  # a delivery in progress finishes before cancel() returns
        self._done = False

    def read(self, db: sqlite3.Connection, compacted: int) -> list[Change] | Exception:
        if self.next_revision <= compacted:
            return Compacted(f"revision {self.next_revision} is compacted (oldest kept: {compacted + 1})")
        rows = db.execute(
            "SELECT revision, key, value FROM changes WHERE revision >= ? AND key >= ? AND key < ? "
            "ORDER BY seq LIMIT 1000",
            (self.next_revision, self.prefix, prefix_end(self.prefix)),
        ).fetchall()
        if rows:
            self.next_revision = rows[-1][0] + 1
            # a revision cut in two by the LIMIT is read again whole next time; one larger than the
            # LIMIT is read whole now
            if len(rows) == 1000:
                rows = [r for r in rows if r[0] < rows[-1][0]] or db.execute(
                    "SELECT revision, key, value FROM changes WHERE revision = ? AND key >= ? AND key < ? "
                    "ORDER BY seq",
                    (rows[0][0], self.prefix, prefix_end(self.prefix)),
                ).fetchall()
                self.next_revision = rows[-1][0] + 1
        return [Change(key, value, revision) for revision, key, value in rows]

    def deliver(self, batch: list[Change] | Exception) -> None:
        with self._lock:
            if self._done or not batch:
                return
            if isinstance(batch, Exception):
                self._done = True
                self.kv._forget(self.watch_id)
            try:
                self.sink(batch)
            except Exception:  # the one dispatcher thread serves every watch: never let a sink stop it
                log.exception("watch sink of %s failed", self.prefix)

    def cancel(self) -> None:
        with self._lock:
            self._done = True
        self.kv._forget(self.watch_id)


def _row_item(row: tuple | None, keys_only: bool = False) -> Item | None:
    if row is None:
        return None
    key, value, create, mod, version, lease = row
    return Item(key, "" if keys_only else value, create, mod, version, lease)


def _holds(db: sqlite3.Connection, c: Compare) -> bool:
    column, op = _COLUMNS[c.target], _OPS[c.op]
    if c.prefix:
        bounds = (c.key, prefix_end(c.key))
        if db.execute("SELECT 1 FROM kv WHERE key >= ? AND key < ? LIMIT 1", bounds).fetchone() is None:
            return c.target != "value" and _holds(db, Compare(c.key, c.target, c.op, c.value))  # as etcd
        failing = db.execute(
            f"SELECT 1 FROM kv WHERE key >= ? AND key < ? AND NOT ({column} {op} ?) LIMIT 1",
            (*bounds, c.value),
        ).fetchone()
        return failing is None
    row = db.execute(f"SELECT {column} FROM kv WHERE key = ?", (c.key,)).fetchone()
    if row is None:
        if c.target == "value":
            return False
        row = (0,)
    return bool(db.execute(f"SELECT ? {op} ?", (row[0], c.value)).fetchone()[0])


def _compacted(db: sqlite3.Connection) -> int:
    return db.execute("SELECT value FROM meta WHERE name = 'compacted'").fetchone()[0]


def _lease_alive(db: sqlite3.Connection, lease: int) -> bool:
    return db.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone() is not None
