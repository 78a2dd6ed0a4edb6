"""Prometheus metrics of one agent, served on METRICS_ADDR (off by default).

Everything is measured in the gunicorn worker: it holds the Flask app, the event loop and the store
client, so one registry per agent sees every series and one scrape shows them all (the master process
only forks and watches the worker). The points of measurement make one call each into ``Metrics``;
what is cheaper to read when scraped (event-loop lag, pool usage) is read then, from the store.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kvstore import KeyValue, Store, StoreError
from kvstore.kv import Item, Op, Watch, WatchSink

log = logging.getLogger(__name__)

BIND_RETRY = 2.0  # seconds between attempts to listen (a worker that is exiting may still hold the port)
# Handlers answer in milliseconds, a store timeout takes seconds: buckets span both.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Label values known in advance start at 0, so a query finds the series before the first failure.
WATCH_SCOPES = ("networks", "bindings", "hosts", "claims", "endpoints")  # plugin/event_loop.py's scopes
KERNEL_OPERATIONS = ("sync", "peers", "port_security", "announce", "collect_devices", "collect_veths")
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def pool_capacity(subnet: str) -> int:
    """Addresses a container may hold in ``subnet``: all but the network and (IPv4) broadcast address."""
    net = ipaddress.ip_network(subnet, strict=False)
    excluded = (1 if net.version == 6 else 2) if net.num_addresses > 2 else 0
    return net.num_addresses - excluded


def watch_scope(scope: str) -> str:
    """A watch scope as a label: one per kind, not one per network ("endpoints/<id>" -> "endpoints")."""
    return scope.split("/", 1)[0]


def request_type(rule: str | None) -> str:
    """The request type Docker calls ("NetworkDriver.CreateEndpoint"); "unknown" for paths no route has,
    so garbage paths cannot grow the label set."""
    return rule.lstrip("/") if rule else "unknown"


class Metrics:
    """One agent's series, in its own registry (several agents in one test process never mix)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # the worker's CPU, memory and file descriptors
        self.requests = Histogram(
            "pyoverlay_plugin_request_duration_seconds",
            "Plugin requests from Docker by type and outcome (ok, or the error class answered), and latency",
            ["type", "outcome"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.watch_restarts = Counter(
            "pyoverlay_watch_restarts",
            "Store watches of the event loop that ended (compaction, lost connection) and were listed again",
            ["scope"],
            registry=r,
        )
        self.kernel_errors = Counter(
            "pyoverlay_kernel_errors",
            "Kernel (netlink, nftables) operations that failed, by operation or plugin request type",
            ["operation"],
            registry=r,
        )
        self.peer_entries = Gauge(
            "pyoverlay_peer_entries",
            "FDB and neighbour entries the event loop programmed for remote endpoints, per network (VNI)",
            ["vni", "kind"],
            registry=r,
        )
        self.store_requests = Histogram(
            "pyoverlay_store_request_duration_seconds",
            "Round trips to the store (etcd, or the embedded store) by key-value operation",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        for scope in WATCH_SCOPES:
            self.watch_restarts.labels(scope)
        for operation in KERNEL_OPERATIONS:
            self.kernel_errors.labels(operation)
        self._vnis: dict[str, int] = {}  # network_id -> VNI of its peer_entries series

    # -- points of measurement ----------------------------------------------------------------------
    def request_done(self, rule: str | None, outcome: str, seconds: float) -> None:
        kind = request_type(rule)
        self.requests.labels(kind, outcome).observe(seconds)
        if outcome == "KernelError":
            self.kernel_errors.labels(kind).inc()

    def watch_restarted(self, scope: str) -> None:
        self.watch_restarts.labels(watch_scope(scope)).inc()

    def kernel_error(self, operation: str, count: int = 1) -> None:
        if count:
            self.kernel_errors.labels(operation).inc(count)

    def peers_programmed(self, network_id: str, vni: int, fdb: int, neigh: int) -> None:
        self._vnis[network_id] = vni
        self.peer_entries.labels(str(vni), "fdb").set(fdb)
        self.peer_entries.labels(str(vni), "neighbour").set(neigh)

    def network_left(self, network_id: str) -> None:
        vni = self._vnis.pop(network_id, None)
        if vni is not None:
            for kind in ("fdb", "neighbour"):
                with contextlib.suppress(KeyError):  # removed already
                    self.peer_entries.remove(str(vni), kind)

    # -- wiring -------------------------------------------------------------------------------------
    def instrument(self, app: Flask) -> None:
        """Time every request of ``app``; call before any other before_request hook (one that refuses
        a request stops the later ones, and refused requests count too)."""

        @app.before_request
        def start_timer() -> None:
            g.metrics_start = time.perf_counter()

        @app.after_request
        def observe(response: Response) -> Response:
            start = g.get("metrics_start")
            if start is not None:
                # plugin/app.py's one error path names the error it answered with in g.outcome
                self.request_done(
                    request.url_rule.rule if request.url_rule else None,
                    g.get("outcome", "ok"),
                    time.perf_counter() - start,
                )
            return response

    def timed(self, kv: KeyValue) -> KeyValue:
        """``kv`` with each call's round trip observed."""
        return TimedKV(kv, self.store_requests)

    def watch_cluster(self, store: Store, applied_revision: Callable[[], int]) -> None:
        """Read event-loop lag and pool usage from ``store`` at each scrape."""
        self.registry.register(ClusterCollector(store, applied_revision))

    def serve(self, host: str, port: int, stop: threading.Event) -> None:
        """Serve /metrics on host:port until ``stop`` is set, trying again while the port is taken."""
        failures = 0
        while not stop.is_set():
            try:
                server, thread = start_http_server(port, host, registry=self.registry)
            except OSError as exc:
                failures += 1
                level = logging.ERROR if failures == 1 else logging.DEBUG
                log.log(level, "metrics on %s:%d not served: %s (trying again)", host, port, exc)
                stop.wait(BIND_RETRY)
                continue
            log.info("metrics on http://%s:%d/metrics", host, port)
            stop.wait()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


class ClusterCollector(Collector):
    """Series read from the store when scraped; a store that does not answer leaves them out and says so
    in pyoverlay_store_up."""

    def __init__(self, store: Store, applied_revision: Callable[[], int]) -> None:
        self.store = store
        self.applied_revision = applied_revision

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("pyoverlay_store_up", "1 if the store answered this scrape's reads")
        try:
            revision = self.store.revision()
            applied = self.applied_revision()  # read after: it may pass revision, never lag behind it
            pools = [(p, len(self.store.reservations(p.pool_id))) for p in self.store.list_pools()]
        except StoreError as exc:
            log.info("metrics: store not read: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("pyoverlay_store_revision", "The store's revision", value=revision)
        yield GaugeMetricFamily(
            "pyoverlay_event_loop_applied_revision",
            "Highest store revision the event loop listed at or applied a change of",
            value=applied,
        )
        yield GaugeMetricFamily(
            "pyoverlay_event_loop_lag_revisions",
            "Store revision minus the event loop's applied revision (every host's heartbeat is watched, "
            "so a loop that keeps up comes back to 0 at least every HOST_TTL/3 seconds)",
            value=max(0, revision - applied),
        )
        used = GaugeMetricFamily(
            "pyoverlay_pool_addresses_used", "Reserved addresses per pool (gateway included)", labels=["pool"]
        )
        capacity = GaugeMetricFamily(
            "pyoverlay_pool_addresses_capacity",
            "Addresses a container may hold per pool (all but network and IPv4 broadcast)",
            labels=["pool"],
        )
        for pool, reserved in pools:
            used.add_metric([pool.pool_id], reserved)
            capacity.add_metric([pool.pool_id], pool_capacity(pool.subnet))
        yield used
        yield capacity


class TimedKV(KeyValue):
    """A key-value primitive that observes how long each call to the one it wraps takes."""

    def __init__(self, kv: KeyValue, histogram: Histogram) -> None:
        self.kv = kv
        self._observe = {op: histogram.labels(op) for op in ("get", "range", "txn", "grant", "keepalive")}
        self._observe["watch"] = histogram.labels("watch")

    def _timed(self, op: str, call: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return call()
        finally:  # a failed call's time counts: a timeout is what a slow store looks like
            self._observe[op].observe(time.perf_counter() - start)

    def get(self, *keys: str) -> list[Item | None]:
        return self._timed("get", lambda: self.kv.get(*keys))

    def range(self, prefix: str, keys_only: bool = False) -> tuple[list[Item], int]:
        return self._timed("range", lambda: self.kv.range(prefix, keys_only))

    def txn(self, compares: Sequence[Any], ops: Sequence[Op]) -> bool:
        return self._timed("txn", lambda: self.kv.txn(compares, ops))

    def grant(self, ttl: int) -> int:
        return self._timed("grant", lambda: self.kv.grant(ttl))

    def keepalive(self, lease: int) -> bool:
        return self._timed("keepalive", lambda: self.kv.keepalive(lease))

    def watch(self, prefix: str, start_revision: int, sink: WatchSink) -> Watch:
        # the watch's start only: its events arrive when the store has them, not on request
        return self._timed("watch", lambda: self.kv.watch(prefix, start_revision, sink))

    def close(self) -> None:
        self.kv.close()
