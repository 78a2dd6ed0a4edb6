"""The embedded single-host store: one SQLite file in the agent's state directory.

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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from . import alloc
from .base import Store
from .model import (
    GATEWAY_OWNER,
    Compacted,
    Conflict,
    Endpoint,
    Event,
    Host,
    Network,
    NotFound,
    Pool,
    StoreUnavailable,
)

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
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY, kind TEXT NOT NULL, action TEXT NOT NULL, key_id TEXT NOT NULL,
    record TEXT);
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compacted', 0);
"""

_POLL = 1.0  # watchers also poll: another process may write the file without notifying us


class SqliteStore(Store):
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

    # -- hosts --------------------------------------------------------------------------------------
    def register_host(self, host: Host, ttl: int = 30) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO hosts VALUES (?, ?, ?)",
                (host.host_id, json.dumps(host.to_json()), time.time() + ttl),
            )

    def list_hosts(self) -> list[Host]:
        with self._tx(write=False) as db:
            rows = db.execute(
                "SELECT record FROM hosts WHERE expires > ? ORDER BY host_id", (time.time(),)
            ).fetchall()
        return [Host.from_json(json.loads(r[0])) for r in rows]

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

    def release_pool(self, host_id: str, pool_id: str) -> None:
        with self._tx() as db:
            pool, _ = self._pool(db, pool_id)
            if pool is None or host_id not in pool.holders:
                return
            holders = tuple(h for h in pool.holders if h != host_id)
            if holders:
                record = json.dumps(replace(pool, holders=holders).to_json())
                db.execute("UPDATE pools SET record = ? WHERE pool_id = ?", (record, pool_id))
            else:
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

    # -- networks -----------------------------------------------------------------------------------
    def create_network(self, host_id: str, docker_network_id: str, network: Network) -> Network:
        with self._tx() as db:
            bound = db.execute(
                "SELECT network_id FROM bindings WHERE host_id = ? AND docker_network_id = ?",
                (host_id, docker_network_id),
            ).fetchone()
            if bound and (existing := self._network(db, bound[0])):
                return existing
            target = None
            if network.pool_id:
                row = db.execute("SELECT network_id FROM networks WHERE pool_id = ?", (network.pool_id,))
                target = next((self._network(db, r[0]) for r in row.fetchall()), None)
            target = target or self._network(db, network.network_id)
            if target is None:
                vni = alloc.pick_vni(r[0] for r in db.execute("SELECT vni FROM networks"))
                target = replace(network, vni=vni, created_by=network.created_by or host_id)
                db.execute(
                    "INSERT INTO networks VALUES (?, ?, ?, ?)",
                    (target.network_id, vni, target.pool_id, json.dumps(target.to_json())),
                )
                self._event(db, "network", "put", target.network_id, json.dumps(target.to_json()))
            else:
                other = db.execute(
                    "SELECT docker_network_id FROM bindings WHERE host_id = ? AND network_id = ? "
                    "AND docker_network_id != ?",
                    (host_id, target.network_id, docker_network_id),
                ).fetchone()
                if other:
                    raise Conflict(
                        f"host {host_id} already binds Docker network {other[0]} "
                        f"to network {target.name or target.network_id}"
                    )
            db.execute(
                "INSERT OR REPLACE INTO bindings VALUES (?, ?, ?)",
                (host_id, docker_network_id, target.network_id),
            )
            return target

    def network_for(self, host_id: str, docker_network_id: str) -> Network:
        with self._tx(write=False) as db:
            bound = db.execute(
                "SELECT network_id FROM bindings WHERE host_id = ? AND docker_network_id = ?",
                (host_id, docker_network_id),
            ).fetchone()
            network = self._network(db, bound[0]) if bound else None
        if network is None:
            raise NotFound(f"Docker network {docker_network_id} is not bound on host {host_id}")
        return network

    def get_network(self, network_id: str) -> Network:
        with self._tx(write=False) as db:
            network = self._network(db, network_id)
        if network is None:
            raise NotFound(f"network {network_id} not found")
        return network

    def list_networks(self) -> list[Network]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT record FROM networks ORDER BY network_id").fetchall()
        return [Network.from_json(json.loads(r[0])) for r in rows]

    def bindings(self, host_id: str) -> dict[str, str]:
        with self._tx(write=False) as db:
            rows = db.execute(
                "SELECT docker_network_id, network_id FROM bindings WHERE host_id = ?", (host_id,)
            )
            return dict(rows.fetchall())

    def set_network_name(self, network_id: str, name: str) -> None:
        with self._tx() as db:
            network = self._network(db, network_id)
            if network is None or network.name == name:
                return
            record = json.dumps(replace(network, name=name).to_json())
            db.execute("UPDATE networks SET record = ? WHERE network_id = ?", (record, network_id))
            self._event(db, "network", "put", network_id, record)

    def delete_network(self, host_id: str, docker_network_id: str) -> None:
        with self._tx() as db:
            bound = db.execute(
                "SELECT network_id FROM bindings WHERE host_id = ? AND docker_network_id = ?",
                (host_id, docker_network_id),
            ).fetchone()
            if not bound:
                return
            network_id = bound[0]
            rows = db.execute(
                "SELECT endpoint_id, host_id FROM endpoints WHERE network_id = ?", (network_id,)
            ).fetchall()
            others = sorted({h for _, h in rows if h != host_id})
            if others:
                raise Conflict(f"network {network_id} still has endpoints on hosts {', '.join(others)}")
            db.execute(
                "DELETE FROM bindings WHERE host_id = ? AND docker_network_id = ?",
                (host_id, docker_network_id),
            )
            if self._network(db, network_id) is None:
                return
            # Only this host's endpoints are left: stale ones its daemon no longer knows about.
            for endpoint_id, _ in rows:
                db.execute("DELETE FROM endpoints WHERE endpoint_id = ?", (endpoint_id,))
                self._event(db, "endpoint", "delete", endpoint_id, None)
            db.execute("DELETE FROM networks WHERE network_id = ?", (network_id,))
            self._event(db, "network", "delete", network_id, None)

    # -- endpoints ----------------------------------------------------------------------------------
    def put_endpoint(self, endpoint: Endpoint) -> Endpoint:
        record = json.dumps(endpoint.to_json())
        with self._tx() as db:
            if self._network(db, endpoint.network_id) is None:
                raise NotFound(f"network {endpoint.network_id} not found")
            db.execute(
                "INSERT OR REPLACE INTO endpoints VALUES (?, ?, ?, ?)",
                (endpoint.endpoint_id, endpoint.network_id, endpoint.host_id, record),
            )
            self._event(db, "endpoint", "put", endpoint.endpoint_id, record)
        return endpoint

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        with self._tx(write=False) as db:
            row = db.execute("SELECT record FROM endpoints WHERE endpoint_id = ?", (endpoint_id,)).fetchone()
        if row is None:
            raise NotFound(f"endpoint {endpoint_id} not found")
        return Endpoint.from_json(json.loads(row[0]))

    def delete_endpoint(self, endpoint_id: str) -> None:
        with self._tx() as db:
            gone = db.execute("DELETE FROM endpoints WHERE endpoint_id = ?", (endpoint_id,)).rowcount
            if gone:
                self._event(db, "endpoint", "delete", endpoint_id, None)

    def list_endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        with self._tx(write=False) as db:
            return self._endpoints(db, network_id)

    @staticmethod
    def _endpoints(db: sqlite3.Connection, network_id: str | None) -> list[Endpoint]:
        if network_id is None:
            rows = db.execute("SELECT record FROM endpoints ORDER BY endpoint_id")
        else:
            rows = db.execute(
                "SELECT record FROM endpoints WHERE network_id = ? ORDER BY endpoint_id", (network_id,)
            )
        return [Endpoint.from_json(json.loads(r[0])) for r in rows.fetchall()]

    # -- watching -----------------------------------------------------------------------------------
    def snapshot(self) -> tuple[list[Network], list[Endpoint], int]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT record FROM networks ORDER BY network_id").fetchall()
            endpoints = self._endpoints(db, None)
            revision = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
        return [Network.from_json(json.loads(r[0])) for r in rows], endpoints, revision

    def watch(self, start_revision: int, timeout: float | None = None) -> Iterator[Event]:
        next_revision = start_revision
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Read and wait under one hold of the lock: a write committed in between cannot be missed.
            with self._changed:
                with self._tx(write=False) as db:
                    compacted = db.execute("SELECT value FROM meta WHERE key = 'compacted'").fetchone()[0]
                    if next_revision <= compacted:
                        raise Compacted(
                            f"revision {next_revision} is compacted (oldest kept: {compacted + 1})"
                        )
                    rows = db.execute(
                        "SELECT * FROM events WHERE revision >= ? ORDER BY revision LIMIT 500",
                        (next_revision,),
                    ).fetchall()
                if not rows:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return
                    self._changed.wait(_POLL if remaining is None else min(remaining, _POLL))
                    continue
            for revision, kind, action, key_id, record in rows:
                next_revision = revision + 1
                yield Event(kind, action, key_id, _record(kind, record), revision)
            deadline = None if timeout is None else time.monotonic() + timeout

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(kind: str, record: str | None) -> Network | Endpoint | None:
    if record is None:
        return None
    data = json.loads(record)
    return Network.from_json(data) if kind == "network" else Endpoint.from_json(data)
