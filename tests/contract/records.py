"""Shorthands the contract tests share for making pools, networks and endpoints."""

from __future__ import annotations

from kvstore import Endpoint, Network, Pool, Store

RANGE = "10.200.0.0/16"


def pool(
    store: Store, subnet: str | None, host: str = "h1", ip_range: str | None = None, size: int = 24
) -> Pool:
    return store.request_pool(host, subnet, ip_range, RANGE, size)


def network(store: Store, host: str, docker_id: str, pool_id: str | None = None) -> Network:
    return store.create_network(host, docker_id, Network(network_id=docker_id, vni=0, pool_id=pool_id))


def endpoint(
    eid: str, network_id: str, host: str, mac: str = "02:00:00:00:00:01", address: str = "10.1.0.5/24"
) -> Endpoint:
    return Endpoint(eid, network_id, host, vtep="192.0.2.1", mac=mac, address=address)
