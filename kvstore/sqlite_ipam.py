"""The embedded single-host store's database, pools and addresses: the IPAM half of SqliteStore, and
the connection and transaction plumbing both halves use.

One connection guarded by a lock serves every thread of the process; writes run in ``BEGIN IMMEDIATE``
so a second process on the same file (a CLI, a second worker) serialises through SQLite's own lock.
Network and endpoint changes are appended to a bounded event log with a monotonically increasing
revision, which gives ``snapshot()``/``watch()`` the same meaning as on etcd.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path

from . import alloc
from .model import GATEWAY_OWNER, Conflict, Network, NotFound, Pool, StoreUnavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (host_id TEXT PRIMARY KEY, record TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pools (pool_id TEXT PRIMARY KEY, record TEXT NOT NULL, cursor TEXT);
CREATE TABLE IF NOT EXISTS addresses (
    pool_id TEXT NOT NULL, address TEXT NOT NULL, owner TEXT NOT NULL, host_id TEXT NOT NULL,
    PRIMARY KEY (pool_id, address), UNIQUE (pool_id, owner));
CREATE TABLE IF NOT EXISTS networks (
    network_id TEXT PRIMARY KEY, vni INTEGER NOT NULL UNIQUE, pool_id TEXT UNIQUE, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bindings (
    host_id TEXT NOT NULL, docker_network_id TEXT NOT NULL, network_id TEXT NOT NULL,
    PRIMARY KEY (host_id, docker_network_id));
CREATE TABLE IF NOT EXISTS endpoints (
    endpoint_id TEXT PRIMARY KEY, network_id TEXT NOT NULL, host_id TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS endpoints_by_network ON endpoints (network_id);
CREATE TABLE IF NOT EXISTS left_networks (
    host_id TEXT NOT NULL, network_id TEXT NOT NULL, PRIMARY KEY (host_id, network_id));
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY, kind TEXT NOT NULL, action TEXT NOT NULL, key_id TEXT NOT NULL,
    record TEXT);
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compacted', 0);
"""


class SqliteIpam:
    def __init__(self, state_dir: str, event_log_size: int = 10_000) -> None:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(state_dir) / "pyoverlay.db"
        self._log_size = event_log_size
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._connect()

    def _connect(self) -> None:
        self._pid = os.getpid()
        try:
            self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state database {self.path} is unavailable: {exc}") from exc

    # -- plumbing -----------------------------------------------------------------------------------
    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if os.getpid() != self._pid:  # opened before a fork (gunicorn --preload): never share it
                self._connect()
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"state database {self.path} is unavailable: {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._db.execute("ROLLBACK")
                raise StoreUnavailable(f"state database {self.path} is unavailable: {exc}") from exc
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if write:
                self._changed.notify_all()

    def _event(self, db: sqlite3.Connection, kind: str, action: str, key_id: str, record: str | None) -> None:
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        rev = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", (rev, kind, action, key_id, record))
        if rev % 100 == 0:  # prune in batches: the log stays bounded without a delete per write
            cut = rev - self._log_size
            if cut > 0:
                db.execute("DELETE FROM events WHERE revision <= ?", (cut,))
                db.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'compacted'", (cut,))

    @staticmethod
    def _network(db: sqlite3.Connection, network_id: str) -> Network | None:
        row = db.execute("SELECT record FROM networks WHERE network_id = ?", (network_id,)).fetchone()
        return Network.from_json(json.loads(row[0])) if row else None

    @staticmethod
    def _pool(db: sqlite3.Connection, pool_id: str) -> tuple[Pool | None, str | None]:
        row = db.execute("SELECT record, cursor FROM pools WHERE pool_id = ?", (pool_id,)).fetchone()
        return (Pool.from_json(json.loads(row[0])), row[1]) if row else (None, None)

    # -- pools --------------------------------------------------------------------------------------
    def request_pool(
        self, host_id: str, subnet: str | None, ip_range: str | None, default_range: str, prefixlen: int
    ) -> Pool:
        with self._tx() as db:
            pools = {
                p.pool_id: p
                for p in (Pool.from_json(json.loads(r[0])) for r in db.execute("SELECT record FROM pools"))
            }
            key, rng = alloc.plan_pool(
                subnet, ip_range, default_range, prefixlen, {k: p.ip_range for k, p in pools.items()}
            )
            pool = pools.get(key) or Pool(pool_id=key, subnet=key, ip_range=rng)
            if host_id in pool.holders:
                return pool
            pool = replace(pool, holders=(*pool.holders, host_id))
            db.execute(
                "INSERT INTO pools (pool_id, record) VALUES (?, ?) "
                "ON CONFLICT (pool_id) DO UPDATE SET record = excluded.record",
                (key, json.dumps(pool.to_json())),
            )
            return pool

    def get_pool(self, pool_id: str) -> Pool:
        with self._tx(write=False) as db:
            pool, _ = self._pool(db, pool_id)
        if pool is None:
            raise NotFound(f"pool {pool_id} not found")
        return pool

    def list_pools(self) -> list[Pool]:
        with self._tx(write=False) as db:
            pools = [Pool.from_json(json.loads(r[0])) for r in db.execute("SELECT record FROM pools")]
        return sorted(pools, key=lambda p: IPv4Network(p.subnet))

    def release_pool(self, host_id: str, pool_id: str) -> None:
        with self._tx() as db:
            self._release_pool(db, host_id, pool_id)

    def _release_pool(self, db: sqlite3.Connection, host_id: str, pool_id: str) -> None:
        pool, _ = self._pool(db, pool_id)
        if pool is None or host_id not in pool.holders:
            return
        holders = tuple(h for h in pool.holders if h != host_id)
        bound = db.execute(
            "SELECT 1 FROM networks JOIN bindings USING (network_id) WHERE networks.pool_id = ?", (pool_id,)
        ).fetchone()
        if holders or bound:  # still bound: Docker deletes the network next, and the pool with it
            record = json.dumps(replace(pool, holders=holders).to_json())
            db.execute("UPDATE pools SET record = ? WHERE pool_id = ?", (record, pool_id))
        else:
            self._delete_pool(db, pool_id)

    @staticmethod
    def _delete_pool(db: sqlite3.Connection, pool_id: str) -> None:
        db.execute("DELETE FROM addresses WHERE pool_id = ?", (pool_id,))
        db.execute("DELETE FROM pools WHERE pool_id = ?", (pool_id,))

    # -- addresses ----------------------------------------------------------------------------------
    def reserve_address(self, pool_id: str, owner: str, host_id: str, address: str | None = None) -> str:
        wanted = str(alloc.parse_address(address)) if address is not None else None
        with self._tx() as db:
            pool, cursor = self._pool(db, pool_id)
            if pool is None:
                raise NotFound(f"pool {pool_id} not found")
            row = db.execute(
                "SELECT address FROM addresses WHERE pool_id = ? AND owner = ?", (pool_id, owner)
            ).fetchone()
            if row:
                if wanted is None or wanted == row[0]:
                    return row[0]
                raise Conflict(f"{owner} already holds address {row[0]} in pool {pool_id}, not {wanted}")
            if wanted is not None:
                alloc.check_requested_address(pool.subnet, wanted)
                holder = db.execute(
                    "SELECT owner FROM addresses WHERE pool_id = ? AND address = ?", (pool_id, wanted)
                ).fetchone()
                if holder:
                    raise Conflict(f"address {wanted} is already in use in pool {pool_id}")
                chosen = wanted
            else:
                used = [
                    r[0] for r in db.execute("SELECT address FROM addresses WHERE pool_id = ?", (pool_id,))
                ]
                chosen = alloc.next_free_address(pool.subnet, pool.ip_range, used, cursor)
                db.execute("UPDATE pools SET cursor = ? WHERE pool_id = ?", (chosen, pool_id))
            db.execute("INSERT INTO addresses VALUES (?, ?, ?, ?)", (pool_id, chosen, owner, host_id))
            return chosen

    def release_address(self, pool_id: str, address: str) -> None:
        addr = str(alloc.parse_address(address))
        with self._tx() as db:
            db.execute(
                "DELETE FROM addresses WHERE pool_id = ? AND address = ? AND owner != ?",
                (pool_id, addr, GATEWAY_OWNER),
            )

    def list_addresses(self, pool_id: str) -> dict[str, str]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT address, owner FROM addresses WHERE pool_id = ?", (pool_id,))
            return dict(rows.fetchall())
