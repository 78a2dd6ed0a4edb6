"""Upgrade of an embedded store written by pyoverlay before the key-value redesign: the tables of
``<state_dir>/pyoverlay.db`` become keys of the one layout (keys.py) in the new store, once, so that a
single-host install keeps its networks, addresses and endpoints across the upgrade."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

from .keys import (
    NETWORKS,
    POOLS_INDEX,
    ROOT,
    VNIS,
    address_prefix,
    binding_key,
    cursor_key,
    dump,
    endpoint_index_key,
    endpoint_key,
    left_prefix,
    network_hosts_prefix,
    owner_prefix,
    pool_key,
    pool_network_key,
)
from .kv import KeyValue, Put
from .model import Pool

log = logging.getLogger(__name__)

LEGACY_FILE = "pyoverlay.db"


def import_legacy(kv: KeyValue, state_dir: str) -> int:
    """Copy the legacy database into ``kv`` if there is one and ``kv`` holds nothing yet; the old file
    is then renamed ``pyoverlay.db.imported``. Returns the number of keys written."""
    path = Path(state_dir) / LEGACY_FILE
    if not path.exists() or kv.range(ROOT, keys_only=True)[0]:
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        puts = list(_legacy_keys(db))
    finally:
        db.close()
    kv.txn([], [Put(key, value) for key, value in puts])
    os.replace(path, path.with_name(LEGACY_FILE + ".imported"))
    log.info("imported %d keys from the embedded store of an earlier version (%s)", len(puts), path)
    return len(puts)


def _legacy_keys(db: sqlite3.Connection):
    index: dict[str, str | None] = {}
    for record, cursor in db.execute("SELECT record, cursor FROM pools"):
        pool = Pool.from_json(json.loads(record))
        index[pool.pool_id] = pool.ip_range
        yield pool_key(pool.pool_id), dump(pool)
        if cursor:
            yield cursor_key(pool.pool_id), dump({"address": cursor})
    yield POOLS_INDEX, dump({"pools": index})
    for pool_id, address, owner, host_id in db.execute(
        "SELECT pool_id, address, owner, host_id FROM addresses"
    ):
        yield address_prefix(pool_id) + address, dump({"owner": owner, "host_id": host_id})
        yield owner_prefix(pool_id) + owner, dump({"address": address})
    for network_id, vni, pool_id, record in db.execute(
        "SELECT network_id, vni, pool_id, record FROM networks"
    ):
        yield NETWORKS + network_id, record
        yield f"{VNIS}{vni}", dump({"network_id": network_id})
        if pool_id:
            yield pool_network_key(pool_id), dump({"network_id": network_id})
    for host_id, docker_id, network_id in db.execute(
        "SELECT host_id, docker_network_id, network_id FROM bindings"
    ):
        yield binding_key(host_id, docker_id), dump({"network_id": network_id})
        yield network_hosts_prefix(network_id) + host_id, dump({"docker_network_id": docker_id})
    for endpoint_id, network_id, record in db.execute(
        "SELECT endpoint_id, network_id, record FROM endpoints"
    ):
        yield endpoint_key(network_id, endpoint_id), record
        yield endpoint_index_key(endpoint_id), dump({"network_id": network_id})
    for host_id, network_id in db.execute("SELECT host_id, network_id FROM left_networks"):
        yield left_prefix(network_id) + host_id, dump({})
