"""The pure parts of plugin/metrics.py and the METRICS_ADDR setting."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from plugin import settings
from plugin.event_loop import BINDINGS, CLAIMS, ENDPOINTS, HOSTS, NETWORKS
from plugin.metrics import WATCH_SCOPES, Metrics, pool_capacity, request_type, watch_scope


@pytest.mark.parametrize(
    "subnet, capacity",
    [
        ("10.30.0.0/24", 254),  # network and broadcast excluded
        ("10.30.0.0/30", 2),
        ("10.30.0.0/31", 2),  # point-to-point: nothing to exclude
        ("10.30.0.1/32", 1),
        ("fd00::/120", 255),  # IPv6: no broadcast, the network address is the subnet-router anycast
        ("fd00::/64", 2**64 - 1),
    ],
)
def test_pool_capacity(subnet: str, capacity: int) -> None:
    assert pool_capacity(subnet) == capacity


def test_watch_restarts_start_at_zero_for_every_scope_of_the_event_loop() -> None:
    scopes = {watch_scope(s) for s in (NETWORKS, BINDINGS, HOSTS, CLAIMS, ENDPOINTS + "a" * 64)}
    assert scopes == set(WATCH_SCOPES)
    text = generate_latest(Metrics().registry).decode()
    for scope in scopes:
        assert f'pyoverlay_watch_restarts_total{{scope="{scope}"}} 0.0' in text


def test_labels_stay_few() -> None:
    assert watch_scope("endpoints/" + "a" * 64) == "endpoints"
    assert watch_scope("networks") == "networks"
    assert request_type("/NetworkDriver.CreateEndpoint") == "NetworkDriver.CreateEndpoint"
    assert request_type(None) == "unknown"  # a path no route has: never the path itself


@pytest.mark.parametrize(
    "value, expected",
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9464", ("0.0.0.0", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        (" 10.99.0.1:1 ", ("10.99.0.1", 1)),
    ],
)
def test_metrics_addr(value: str, expected: tuple[str, int]) -> None:
    assert settings.split_host_port(value) == expected
    assert settings.load(env={"METRICS_ADDR": value}).metrics_addr == value.strip()


@pytest.mark.parametrize(
    "value", ["9464", "localhost:9464", "127.0.0.1:", "127.0.0.1:0", "1.2.3.4:65536", "[::1]"]
)
def test_metrics_addr_refused_with_the_setting_named(value: str) -> None:
    with pytest.raises(SystemExit, match="METRICS_ADDR"):
        settings.load(env={"METRICS_ADDR": value})


def test_metrics_are_off_by_default() -> None:
    assert settings.load(env={}).metrics_addr == ""


def test_peer_entries_of_a_network_left_are_dropped() -> None:
    metrics = Metrics()
    metrics.peers_programmed("net-a", 4097, fdb=3, neigh=2)
    metrics.peers_programmed("net-b", 4098, fdb=1, neigh=0)
    text = generate_latest(metrics.registry).decode()
    assert 'pyoverlay_peer_entries{kind="fdb",vni="4097"} 3.0' in text
    assert 'pyoverlay_peer_entries{kind="neighbour",vni="4097"} 2.0' in text
    metrics.network_left("net-a")
    metrics.network_left("net-a")  # idempotent
    text = generate_latest(metrics.registry).decode()
    assert 'vni="4097"' not in text and 'pyoverlay_peer_entries{kind="fdb",vni="4098"} 1.0' in text


def test_kernel_errors_count_request_types_answered_with_a_kernel_error() -> None:
    metrics = Metrics()
    metrics.request_done("/NetworkDriver.Join", "KernelError", 0.01)
    metrics.request_done("/NetworkDriver.Join", "ok", 0.01)
    metrics.kernel_error("peers", 0)  # nothing failed
    metrics.kernel_error("peers", 2)
    text = generate_latest(metrics.registry).decode()
    assert 'pyoverlay_kernel_errors_total{operation="NetworkDriver.Join"} 1.0' in text
    assert 'pyoverlay_kernel_errors_total{operation="peers"} 2.0' in text
    assert (
        'pyoverlay_plugin_request_duration_seconds_count{outcome="ok",type="NetworkDriver.Join"} 1.0' in text
    )
