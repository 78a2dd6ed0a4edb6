"""Store.hosts_seen, network_hosts and block_holders: what `pyoverlay status` reads of the cluster."""

from __future__ import annotations

import time

from kvstore import Host, Store

from .records import network, pool


def test_a_heartbeat_is_kept_beyond_the_lease_until_the_host_is_forgotten(store: Store) -> None:
    before = time.time()
    store.register_host(Host("h1", "192.0.2.1", hostname="node1"))
    [(host, heartbeat)] = store.hosts_seen().values()
    assert host == Host("h1", "192.0.2.1", hostname="node1") and before <= heartbeat <= time.time()
    store.register_host(Host("h1", "192.0.2.1", hostname="node1"))
    assert store.hosts_seen()["h1"][1] >= heartbeat  # each heartbeat moves it
    assert store.lease_of("h1") is not None and store.lease_of("h1")[1] == 30
    assert store.knows_host("h1")
    store.forget_host("h1")
    assert store.hosts_seen() == {} and not store.knows_host("h1")


def test_network_hosts_and_block_holders(store: Store) -> None:
    shared = pool(store, "10.1.0.0/24", "h1")
    store.request_pool("h2", "10.1.0.0/24", None, "10.200.0.0/16", 24)
    network(store, "h1", "dockA", shared.pool_id)
    network(store, "h2", "dockB", shared.pool_id)
    assert store.network_hosts("dockA") == {"h1": "dockA", "h2": "dockB"}
    blocky = store.request_pool("h1", "10.2.0.0/24", None, "10.200.0.0/16", 24, block_size=28)
    block, _ = store.claim_block(blocky.pool_id, "h2")
    assert store.block_holders(blocky.pool_id) == {block: "h2"}
    assert store.block_holders(shared.pool_id) == {}
