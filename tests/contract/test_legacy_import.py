"""An embedded store written before the key-value redesign is carried over on upgrade. The fixture
data/legacy-store.sql is a dump of a database the previous release's SqliteStore wrote (two hosts, two
pools, an endpoint with its container name, a network one host left)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kvstore import GATEWAY_OWNER, open_store

DUMP = Path(__file__).parent / "data" / "legacy-store.sql"


def test_legacy_store_is_imported_once(tmp_path) -> None:
    with sqlite3.connect(tmp_path / "pyoverlay.db") as db:
        db.executescript(DUMP.read_text())
    store = open_store([], str(tmp_path))
    try:
        web = store.network_for("h1", "dockA")
        assert (web.name, web.vni, web.gateway, web.pool_id) == ("web", 4096, "10.40.0.1", "10.40.0.0/24")
        assert store.get_endpoint("e1aaaaaaaaaaaa").container_name == "box1"
        assert [e.endpoint_id for e in store.list_endpoints("dockL")] == ["e2bbbbbbbbbbbb"]
        assert store.bindings("h2") == {"dockL": "dockL"} and store.left_networks("h1") == {"dockL"}
        assert store.list_addresses("10.40.0.0/24") == {
            "10.40.0.1": GATEWAY_OWNER,
            "10.40.0.2": "02:00:00:00:00:01",
        }
        assert store.get_pool("10.41.0.0/24").ip_range == "10.41.0.128/25"
        # allocation carries on where it stopped: the owner index, the cursor and the pool index came along
        assert store.reserve_address("10.40.0.0/24", "02:00:00:00:00:01", "h1") == "10.40.0.2"
        assert store.reserve_address("10.40.0.0/24", "02:00:00:00:00:03", "h1") == "10.40.0.3"
        assert store.request_pool("h2", "10.40.0.0/24", None, "10.200.0.0/13", 24).holders == ("h1", "h2")
        assert (
            store.create_network("h2", "dockB", store.get_network("dockA")).vni == 4096
        )  # same pool: joined
        assert not (tmp_path / "pyoverlay.db").exists() and (tmp_path / "pyoverlay.db.imported").exists()
    finally:
        store.close()
    reopened = open_store([], str(tmp_path))  # imported once: a reopen starts from the new store
    try:
        assert reopened.get_endpoint("e1aaaaaaaaaaaa").container_name == "box1"
    finally:
        reopened.close()
