"""What a host keeps on its own disk to work while the store is away: a journal of the changes it made
then, published in order when the store answers, and a copy of the records its requests read.

One SQLite file, ``<state_dir>/offline.db`` (WAL, every commit synced): an agent killed in the middle of
an outage finds its journal and its copies again on restart. In memory when there is no state directory
(tests), as the embedded store is.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS copies (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class OfflineState:
    def __init__(self, state_dir: str | None) -> None:
        path = ":memory:"
        if state_dir is not None:
            os.makedirs(state_dir, exist_ok=True)
            path = os.path.join(state_dir, "offline.db")
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a journalled change survives a power cut
            self._db.executescript(SCHEMA)
        self._copies: dict[str, Any] = {
            key: json.loads(value) for key, value in self._db.execute("SELECT key, value FROM copies")
        }
        self._pending = self._db.execute("SELECT count(*) FROM journal").fetchone()[0]

    # -- the journal --------------------------------------------------------------------------------
    def append(self, op: dict[str, Any]) -> int:
        """Keep a change for publishing; returns its sequence number."""
        with self._lock:
            seq = self._db.execute("INSERT INTO journal (op) VALUES (?)", (json.dumps(op),)).lastrowid
            self._pending += 1
        return int(seq or 0)

    def journal(self) -> list[tuple[int, dict[str, Any]]]:
        """The changes not yet published, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, op FROM journal ORDER BY seq").fetchall()
        return [(seq, json.loads(op)) for seq, op in rows]

    def published(self, seq: int) -> None:
        with self._lock:
            if self._db.execute("DELETE FROM journal WHERE seq = ?", (seq,)).rowcount:
                self._pending -= 1

    @property
    def pending(self) -> int:
        return self._pending

    # -- copies of records --------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        with self._lock:
            return self._copies.get(key)

    def put(self, key: str, value: Any) -> None:
        """Keep ``value`` (JSON-able) under ``key``; written only when it changed."""
        with self._lock:
            if self._copies.get(key) == value:
                return
            self._copies[key] = value
            self._db.execute("INSERT OR REPLACE INTO copies VALUES (?, ?)", (key, json.dumps(value)))

    def delete(self, key: str) -> None:
        with self._lock:
            if self._copies.pop(key, None) is not None:
                self._db.execute("DELETE FROM copies WHERE key = ?", (key,))

    def items(self, prefix: str) -> Iterator[tuple[str, Any]]:
        with self._lock:
            found = [(k, v) for k, v in self._copies.items() if k.startswith(prefix)]
        yield from found

    def close(self) -> None:
        with self._lock:
            self._db.close()
