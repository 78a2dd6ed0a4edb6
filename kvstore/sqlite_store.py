"""The embedded single-host store: one SQLite file in the agent's state directory. The database,
pools and addresses live in sqlite_ipam.py; hosts, networks, endpoints and the watch here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace

from . import alloc
from .base import Store
from .model import Compacted, Conflict, Endpoint, Event, Host, Network, NotFound, Pool
from .sqlite_ipam import SqliteIpam

_POLL = 1.0  # watchers also poll: another process may write the file without notifying us


class SqliteStore(SqliteIpam, Store):
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
            db.execute(  # back on a network it left
                "DELETE FROM left_networks WHERE host_id = ? AND network_id = ?", (host_id, target.network_id)
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

    def left_networks(self, host_id: str) -> set[str]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT network_id FROM left_networks WHERE host_id = ?", (host_id,))
            return {r[0] for r in rows.fetchall()}

    def unbind(self, host_id: str, docker_network_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM bindings WHERE host_id = ? AND docker_network_id = ?",
                (host_id, docker_network_id),
            )

    def delete_network(self, host_id: str, docker_network_id: str) -> bool:
        with self._tx() as db:
            return self._unbind(db, host_id, docker_network_id, forgetting=False)

    def _unbind(self, db: sqlite3.Connection, host_id: str, docker_network_id: str, forgetting: bool) -> bool:
        """Drop the binding; delete the cluster network as delete_network (or, when ``forgetting`` a
        dead host, only if no other host binds it) or else mark the host as having left it."""
        bound = db.execute(
            "SELECT network_id FROM bindings WHERE host_id = ? AND docker_network_id = ?",
            (host_id, docker_network_id),
        ).fetchone()
        if not bound:
            return False
        network_id = bound[0]
        db.execute(
            "DELETE FROM bindings WHERE host_id = ? AND docker_network_id = ?", (host_id, docker_network_id)
        )
        network = self._network(db, network_id)
        if network is None:  # deleted from another host already: the binding was all that was left
            db.execute(
                "DELETE FROM left_networks WHERE host_id = ? AND network_id = ?", (host_id, network_id)
            )
            return False
        rows = db.execute(
            "SELECT endpoint_id, host_id FROM endpoints WHERE network_id = ?", (network_id,)
        ).fetchall()
        other_binders = db.execute("SELECT 1 FROM bindings WHERE network_id = ?", (network_id,)).fetchone()
        theirs = {e for e, h in rows if h != host_id}
        in_use = bool(other_binders) if forgetting else bool(other_binders and theirs)
        # This host's endpoints always go (stale: Docker deletes a network only without endpoints).
        for endpoint_id in (e for e, _ in rows if not (in_use and e in theirs)):
            db.execute("DELETE FROM endpoints WHERE endpoint_id = ?", (endpoint_id,))
            self._event(db, "endpoint", "delete", endpoint_id, None)
        if in_use:
            if not forgetting:
                db.execute("INSERT OR IGNORE INTO left_networks VALUES (?, ?)", (host_id, network_id))
            return False
        db.execute("DELETE FROM left_networks WHERE network_id = ?", (network_id,))
        db.execute("DELETE FROM networks WHERE network_id = ?", (network_id,))
        self._event(db, "network", "delete", network_id, None)
        pool, _ = self._pool(db, network.pool_id) if network.pool_id else (None, None)
        if pool is not None and not pool.holders:  # every holder released it, for this deletion
            self._delete_pool(db, pool.pool_id)
        return True

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

    def set_endpoint_name(self, endpoint_id: str, name: str) -> None:
        with self._tx() as db:
            row = db.execute("SELECT record FROM endpoints WHERE endpoint_id = ?", (endpoint_id,)).fetchone()
            if row is None:
                return
            endpoint = Endpoint.from_json(json.loads(row[0]))
            if endpoint.container_name == name:
                return
            record = json.dumps(replace(endpoint, container_name=name).to_json())
            db.execute("UPDATE endpoints SET record = ? WHERE endpoint_id = ?", (record, endpoint_id))
            self._event(db, "endpoint", "put", endpoint_id, record)

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

    # -- forgetting a dead host --------------------------------------------------------------------
    def forget_host(self, host_id: str) -> int:
        with self._tx() as db:
            rows = db.execute("SELECT record FROM endpoints WHERE host_id = ?", (host_id,)).fetchall()
            for endpoint in (Endpoint.from_json(json.loads(r[0])) for r in rows):
                network = self._network(db, endpoint.network_id)
                if network is not None and network.pool_id:
                    db.execute(
                        "DELETE FROM addresses WHERE pool_id = ? AND owner = ?",
                        (network.pool_id, endpoint.mac),
                    )
                db.execute("DELETE FROM endpoints WHERE endpoint_id = ?", (endpoint.endpoint_id,))
                self._event(db, "endpoint", "delete", endpoint.endpoint_id, None)
            bound = db.execute("SELECT docker_network_id FROM bindings WHERE host_id = ?", (host_id,))
            for (docker_network_id,) in bound.fetchall():
                self._unbind(db, host_id, docker_network_id, forgetting=True)
            for pool in [Pool.from_json(json.loads(r[0])) for r in db.execute("SELECT record FROM pools")]:
                self._release_pool(db, host_id, pool.pool_id)  # after the bindings, as on etcd
            db.execute("DELETE FROM left_networks WHERE host_id = ?", (host_id,))
            db.execute("DELETE FROM hosts WHERE host_id = ?", (host_id,))
            return len(rows)

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
