"""Host A's metrics (plugin/metrics.py) wired as plugin/agent.py wires them, host B writing to the same
store: one scrape of A's registry shows its request series next to its event loop's and the store's."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from driver.peers import FLOOD_MAC
from kvstore import Host as HostRecord
from kvstore import Store, StoreUnavailable
from kvstore.alloc import VNI_MIN
from kvstore.kv_sqlite import SqliteKV
from plugin.app import create_app
from plugin.event_loop import ENDPOINTS
from plugin.metrics import Metrics

from .conftest import Host

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> Samples:
    """One scrape, as Prometheus parses it: (sample name, labels) -> value."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wired(host: Host) -> Metrics:
    metrics = Metrics()
    host.loop.metrics = metrics
    metrics.watch_cluster(host.store, lambda: host.loop.applied_revision)
    return metrics


def test_requests_event_loop_and_pools_on_one_scrape(host_a: Host, host_b: Host) -> None:
    metrics = wired(host_a)
    client = create_app(host_a.network, host_a.ipam, metrics=metrics).test_client()
    assert client.post("/NetworkDriver.GetCapabilities").status_code == 200
    assert client.post("/NetworkDriver.CreateEndpoint", data=b"{}").status_code == 400
    assert client.post("/NetworkDriver.NoSuchCall").status_code == 404
    theirs = host_b.create_network("10.30.0.0/24")
    mine = host_a.create_network("10.30.0.0/24")
    host_a.loop.relist()
    host_a.settle()
    host_a.create_endpoint(mine)
    first, second = host_b.create_endpoint(theirs), host_b.create_endpoint(theirs)
    host_a.drain(lambda: (FLOOD_MAC, host_b.vtep) in host_a.dp.peers[VNI_MIN].fdb)
    host_a.settle()
    samples = scrape(metrics)

    requests = "pyoverlay_plugin_request_duration_seconds_count"
    assert value(samples, requests, type="NetworkDriver.GetCapabilities", outcome="ok") == 1
    assert value(samples, requests, type="NetworkDriver.CreateEndpoint", outcome="BadRequest") == 1
    assert value(samples, requests, type="unknown", outcome="PluginError") == 1  # 404: not implemented
    vni = str(VNI_MIN)
    assert value(samples, "pyoverlay_peer_entries", vni=vni, kind="fdb") == 3  # two MACs and B's flood
    assert value(samples, "pyoverlay_peer_entries", vni=vni, kind="neighbour") == 2
    assert value(samples, "pyoverlay_store_up") == 1
    revision, applied = host_a.store.revision(), host_a.loop.applied_revision
    assert value(samples, "pyoverlay_store_revision") == revision
    assert value(samples, "pyoverlay_event_loop_applied_revision") == applied
    assert value(samples, "pyoverlay_event_loop_lag_revisions") == revision - applied
    # gateway, A's endpoint and B's two
    assert value(samples, "pyoverlay_pool_addresses_used", pool="10.30.0.0/24") == 4
    assert value(samples, "pyoverlay_pool_addresses_capacity", pool="10.30.0.0/24") == 254
    assert first and second


def test_lag_grows_while_the_loop_is_behind_and_heartbeats_bring_it_back(host_a: Host, host_b: Host):
    metrics = wired(host_a)
    host_a.loop.relist()
    host_a.settle()
    theirs = host_b.create_network("10.30.0.0/24")  # written, not yet handled by A's loop
    behind = value(scrape(metrics), "pyoverlay_event_loop_lag_revisions")
    assert behind is not None and behind >= 1
    host_b.store.register_host(HostRecord("host-b", host_b.vtep), ttl=30)  # every loop watches hosts
    host_a.settle()
    assert value(scrape(metrics), "pyoverlay_event_loop_lag_revisions") == 0
    assert theirs


def test_watch_restarts_counted_per_scope_kind(host_a: Host, host_b: Host):
    metrics = wired(host_a)
    theirs = host_b.create_network("10.30.0.0/24")
    host_a.create_network("10.30.0.0/24")
    host_a.loop.relist()
    host_a.settle()
    scope = ENDPOINTS + theirs.docker_id
    generation, _ = host_a.loop._watches[scope]
    host_a.loop.queue.put(("watch", scope, (generation, StoreUnavailable("connection lost"))))
    host_a.settle()
    assert value(scrape(metrics), "pyoverlay_watch_restarts_total", scope="endpoints") == 1


def test_store_round_trips_are_timed_per_operation() -> None:
    metrics = Metrics()
    kv = SqliteKV(None)
    try:
        store = Store(metrics.timed(kv))
        store.register_host(HostRecord("host-x", "192.0.2.9"), ttl=30)
        store.list_hosts()
        samples = scrape(metrics)
    finally:
        kv.close()
    for operation in ("grant", "get", "txn", "range"):
        count = value(samples, "pyoverlay_store_request_duration_seconds_count", operation=operation)
        assert count is not None and count >= 1, operation
