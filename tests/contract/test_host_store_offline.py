"""Two hosts' HostStores on a real etcd that goes down: each hands out addresses of its own blocks and
journals its endpoints alone, and when etcd is back both publish without a single conflict. Also: what
cannot be served without etcd fails at once naming it, and the journal survives an agent restart."""

from __future__ import annotations

import uuid

import pytest

from kvstore import Endpoint, HostStore, Network, Store, StoreUnavailable
from kvstore.etcd_conn import EtcdConnection
from kvstore.kv_etcd import EtcdKV
from tests.etcd_server import EtcdServer

SUBNET = "10.64.0.0/24"


def open_host(server: EtcdServer, host_id: str, state_dir) -> HostStore:
    return HostStore(Store(EtcdKV(EtcdConnection([server.endpoint], timeout=2))), host_id, str(state_dir))


def network_on(hosts: list[HostStore]) -> Network:
    for host in hosts:
        pool = host.store.request_pool(host.host_id, SUBNET, None, "10.0.0.0/8", 24, 28)
    hosts[0].reserve_address(pool, "gateway", None)
    wanted = Network(network_id="n" * 64, vni=0, subnet=SUBNET, pool_id=pool.pool_id, gateway="10.64.0.1")
    network = hosts[0].store.create_network(hosts[0].host_id, "n" * 64, wanted)
    for n, host in enumerate(hosts[1:], 1):
        host.store.create_network(host.host_id, f"{n}" * 64, wanted)
    for host in hosts:
        host.keep()  # as the agent's block keeper does: copies of its networks, a spare block
    return network


def start_containers(host: HostStore, network: Network, count: int) -> list[Endpoint]:
    """RequestAddress then CreateEndpoint, as Docker calls them, until the host cannot serve one more."""
    pool = host.get_pool(network.pool_id or "")
    started = []
    for _ in range(count):
        try:
            address = host.reserve_address(pool, f"request-{uuid.uuid4().hex[:16]}", None)
        except StoreUnavailable as exc:
            assert "etcd is unreachable" in str(exc) and "blocks" in str(exc)
            break
        mac = "02:42:" + ":".join(f"{int(b):02x}" for b in address.split("."))
        endpoint = Endpoint(
            endpoint_id=uuid.uuid4().hex * 2,
            network_id=network.network_id,
            host_id=host.host_id,
            vtep="192.0.2.1",
            mac=mac,
            address=f"{address}/24",
        )
        host.put_endpoint(endpoint, network.pool_id, None)
        started.append(endpoint)
    return started


def test_two_hosts_work_alone_while_etcd_is_down_and_publish_without_conflict(fresh_etcd, tmp_path) -> None:
    a, b = open_host(fresh_etcd, "ha", tmp_path / "a"), open_host(fresh_etcd, "hb", tmp_path / "b")
    network = network_on([a, b])
    before = start_containers(a, network, 2)
    a.keep()  # the keeper, woken by the allocations: another block, as a spare
    assert len(a.blocks.held(network.pool_id or "")) == 2
    fresh_etcd.stop()
    away_a = start_containers(a, network, 40)  # until its blocks are full: more blocks need etcd
    away_b = start_containers(b, network, 40)
    assert a.away and b.away
    assert 16 <= len(away_a) < 40 and 16 <= len(away_b) < 40  # a spare block's worth at least each
    addresses = [e.ip for e in before + away_a + away_b]
    assert len(set(addresses)) == len(addresses)  # no address twice, with no store to ask
    with pytest.raises(StoreUnavailable, match="etcd is unreachable.*fixed address"):
        a.reserve_address(a.get_pool(network.pool_id or ""), "request-x", "10.64.0.200")
    a.delete_endpoint(before[0].endpoint_id)  # a container removed meanwhile
    a.release_address(network.pool_id or "", before[0].ip or "")
    a.offline.close()
    a = open_host(fresh_etcd, "ha", tmp_path / "a")  # the agent restarted during the outage
    assert a.offline.pending == 2 * len(away_a) + 2
    fresh_etcd.start()
    assert a.publish() == 2 * len(away_a) + 2 and b.publish() == 2 * len(away_b)
    assert a.conflicts == b.conflicts == 0
    store = a.store
    owners = store.list_addresses(network.pool_id or "")
    expected = {e.ip: e.mac for e in before[1:] + away_a + away_b} | {"10.64.0.1": "gateway"}
    assert owners == expected  # every address owned by its endpoint's MAC, the removed one freed
    assert {e.endpoint_id for e in store.list_endpoints(network.network_id)} == {
        e.endpoint_id for e in before[1:] + away_a + away_b
    }
    assert a.offline.pending == b.offline.pending == 0 and not a.away and not b.away


def test_what_needs_etcd_fails_at_once_naming_it(fresh_etcd, tmp_path) -> None:
    a = open_host(fresh_etcd, "ha", tmp_path / "a")
    network = network_on([a])
    fresh_etcd.stop()
    a.mark_away(StoreUnavailable("down"))  # as the heartbeat does when it fails
    pool = a.get_pool(network.pool_id or "")
    for call in (
        lambda: a.reserve_address(pool, "gateway", None),
        lambda: a.reserve_address(pool, "request-1", "10.64.0.99"),
        lambda: a.network_for("unknown-docker-network"),
    ):
        with pytest.raises(StoreUnavailable, match="etcd is unreachable from this host"):
            call()
    assert a.network_for("n" * 64).network_id == network.network_id  # known here: its copy
    assert a.offline.pending == 0  # nothing half-done was journalled
