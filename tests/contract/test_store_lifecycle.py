"""Leaving and deleting networks the way Docker does it, and forgetting a dead host (kvstore/base.py)."""

from __future__ import annotations

import pytest

from kvstore import GATEWAY_OWNER, Host, NotFound, Store
from tests.watching import Collector

from .records import endpoint, network, pool

SUBNET = "10.1.0.0/24"


def assert_nothing_left(store: Store, pool_id: str, hosts: tuple[str, ...] = ("h1", "h2")) -> None:
    assert store.list_pools() == []
    assert store.list_addresses(pool_id) == {}
    assert store.list_networks() == []
    assert store.list_endpoints() == []
    for host in hosts:
        assert store.bindings(host) == {}
        assert store.left_networks(host) == set()


def two_hosts_on_one_network(make_store) -> tuple[Store, Store, str, str]:
    """Host h1 (store a) creates dockA on a pool, host h2 (store b) has it as dockB: as Docker does it."""
    a, b = make_store(), make_store()
    p = pool(a, SUBNET, "h1")
    gw = a.reserve_address(p.pool_id, GATEWAY_OWNER, "h1")
    network(a, "h1", "dockA", p.pool_id)
    pool(b, SUBNET, "h2")
    assert b.reserve_address(p.pool_id, GATEWAY_OWNER, "h2") == gw
    network(b, "h2", "dockB", p.pool_id)
    return a, b, p.pool_id, gw


def test_docker_rm_on_one_host_deletes_an_unused_network_everywhere(make_store) -> None:
    a, b, pool_id, gw = two_hosts_on_one_network(make_store)
    _, rev = b.networks_at()
    seen = Collector()
    watch = b.watch_networks(rev + 1, seen)
    # host 1: docker network rm, in Docker's order
    a.release_address(pool_id, gw)  # the gateway goes with the pool: no-op
    a.release_pool("h1", pool_id)
    assert b.get_pool(pool_id).holders == ("h2",)
    assert a.delete_network("h1", "dockA") is True
    # host 2 sees the network vanish...
    events = [(e.kind, e.action, e.key_id) for e in seen.items(quiet=0.5)]
    watch.cancel()
    assert events == [("network", "delete", "dockA")]
    assert b.list_networks() == [] and b.bindings("h2") == {"dockB": "dockA"}
    with pytest.raises(NotFound):
        b.network_for("h2", "dockB")
    # ... and removes it from its daemon, in the same order
    b.release_address(pool_id, gw)
    b.release_pool("h2", pool_id)  # the last holder, and the network is gone: the pool goes
    assert b.delete_network("h2", "dockB") is False  # the cluster record was gone already
    assert b.delete_network("h2", "dockB") is False  # retry: no-op
    assert_nothing_left(a, pool_id)


def test_docker_rm_with_containers_elsewhere_leaves_the_network(make_store) -> None:
    a, b, pool_id, gw = two_hosts_on_one_network(make_store)
    address = b.reserve_address(pool_id, "02:00:00:00:00:02", "h2")
    b.put_endpoint(endpoint("e2", "dockA", "h2", "02:00:00:00:00:02", f"{address}/24"))
    a.put_endpoint(endpoint("e1", "dockA", "h1"))  # stale: host 1's daemon has no container left
    a.release_address(pool_id, gw)
    a.release_pool("h1", pool_id)
    assert a.delete_network("h1", "dockA") is False
    assert a.left_networks("h1") == {"dockA"} and b.left_networks("h2") == set()
    assert a.bindings("h1") == {} and b.bindings("h2") == {"dockB": "dockA"}
    assert [n.network_id for n in b.list_networks()] == ["dockA"]
    assert [e.endpoint_id for e in b.list_endpoints()] == ["e2"]
    assert b.get_pool(pool_id).holders == ("h2",)
    assert a.delete_network("h1", "dockA") is False  # retry: no-op
    assert a.left_networks("h1") == {"dockA"}
    # host 2's container stops, then the network is removed there too
    b.release_address(pool_id, address)
    b.delete_endpoint("e2")
    b.release_address(pool_id, gw)
    b.release_pool("h2", pool_id)
    assert b.get_pool(pool_id).holders == ()  # kept for its network's deletion, which comes next
    assert b.list_addresses(pool_id) == {gw: GATEWAY_OWNER}
    assert b.delete_network("h2", "dockB") is True
    assert_nothing_left(a, pool_id)


def test_single_host_docker_rm_deletes_pool_with_the_network(store: Store) -> None:
    p = pool(store, SUBNET, "h1")
    gw = store.reserve_address(p.pool_id, GATEWAY_OWNER, "h1")
    net = network(store, "h1", "dockA", p.pool_id)
    store.put_endpoint(endpoint("e1", net.network_id, "h1"))  # stale: goes with the network
    store.release_address(p.pool_id, gw)
    store.release_pool("h1", p.pool_id)
    assert store.get_pool(p.pool_id).holders == ()
    assert store.delete_network("h1", "dockA") is True
    assert_nothing_left(store, p.pool_id, ("h1",))
    assert store.delete_network("h1", "dockA") is False  # retry: unknown binding
    assert store.delete_network("h1", "never") is False
    again = network(store, "h1", "dockE", pool(store, SUBNET, "h1").pool_id)  # the subnet is free again
    assert again.network_id == "dockE" and again.vni == net.vni


def test_rejoining_a_left_network_clears_the_mark(make_store) -> None:
    a, b, pool_id, _ = two_hosts_on_one_network(make_store)
    b.put_endpoint(endpoint("e2", "dockA", "h2"))
    assert a.delete_network("h1", "dockA") is False
    assert a.left_networks("h1") == {"dockA"}
    assert network(a, "h1", "dockA2", pool_id).network_id == "dockA"  # created again on host 1
    assert a.left_networks("h1") == set()
    assert a.bindings("h1") == {"dockA2": "dockA"}


def test_deleting_a_network_clears_every_left_mark(make_store) -> None:
    a, b = make_store(), make_store()
    network(a, "h1", "dockA")  # Docker's default IPAM (single host), bound by id on three hosts
    network(b, "h2", "dockA")
    network(b, "h3", "dockA")
    b.put_endpoint(endpoint("e2", "dockA", "h2"))
    assert a.delete_network("h1", "dockA") is False
    assert b.delete_network("h3", "dockA") is False
    assert a.left_networks("h1") == {"dockA"} == b.left_networks("h3")
    assert b.delete_network("h2", "dockA") is True  # its own endpoint goes with it
    assert a.list_endpoints() == [] and a.list_networks() == []
    assert a.left_networks("h1") == set() == b.left_networks("h3")


def test_no_other_binder_deletes_even_with_endpoints_elsewhere(store: Store) -> None:
    net = network(store, "h1", "dockA")
    store.put_endpoint(endpoint("e9", net.network_id, "h9"))  # a host that never bound it: stale
    assert store.delete_network("h1", "dockA") is True
    assert store.list_endpoints() == [] and store.list_networks() == []
    with pytest.raises(NotFound):
        store.get_endpoint("e9")


# -- forgetting a dead host -------------------------------------------------------------------------
def test_forget_host(make_store) -> None:
    a, b = make_store(), make_store()
    a.register_host(Host("h1", "192.0.2.1"))
    b.register_host(Host("h2", "192.0.2.2"))
    # shared: pool P with network dockP, bound on both, an endpoint on each
    p = pool(a, SUBNET, "h1")
    pool(b, SUBNET, "h2")
    gw = a.reserve_address(p.pool_id, GATEWAY_OWNER, "h1")
    network(a, "h1", "dockP", p.pool_id)
    network(b, "h2", "dockP2", p.pool_id)
    addr1 = a.reserve_address(p.pool_id, "02:00:00:00:00:01", "h1")
    addr2 = b.reserve_address(p.pool_id, "02:00:00:00:00:02", "h2")
    a.put_endpoint(endpoint("e1", "dockP", "h1", "02:00:00:00:00:01", f"{addr1}/24"))
    b.put_endpoint(endpoint("e2", "dockP", "h2", "02:00:00:00:00:02", f"{addr2}/24"))
    # host 1's alone: pool Q with network dockQ and an endpoint, and pool R without a network
    q = pool(a, "10.2.0.0/24", "h1")
    network(a, "h1", "dockQ", q.pool_id)
    addr3 = a.reserve_address(q.pool_id, "02:00:00:00:00:03", "h1")
    a.put_endpoint(endpoint("e3", "dockQ", "h1", "02:00:00:00:00:03", f"{addr3}/24"))
    r = pool(a, "10.3.0.0/24", "h1")
    # a network host 1 left: dockL lives on with host 2's endpoint
    network(b, "h2", "dockL")
    network(a, "h1", "dockL")
    b.put_endpoint(endpoint("e4", "dockL", "h2"))
    assert a.delete_network("h1", "dockL") is False

    assert b.forget_host("h1") == 2
    assert [e.endpoint_id for e in b.list_endpoints()] == ["e2", "e4"]
    assert b.list_addresses(p.pool_id) == {gw: GATEWAY_OWNER, addr2: "02:00:00:00:00:02"}
    assert [(x.pool_id, x.holders) for x in b.list_pools()] == [(p.pool_id, ("h2",))]
    assert b.list_addresses(q.pool_id) == {} and b.list_addresses(r.pool_id) == {}
    assert [n.network_id for n in b.list_networks()] == ["dockL", "dockP"]  # dockQ: nobody bound it
    assert b.bindings("h1") == {} and b.left_networks("h1") == set()
    assert b.bindings("h2") == {"dockL": "dockL", "dockP2": "dockP"}
    assert [h.host_id for h in b.list_hosts()] == ["h2"]
    before = b._kv.range("/pyoverlay/")
    assert b.forget_host("h1") == 0  # idempotent: not a single write
    assert b._kv.range("/pyoverlay/") == before
    assert b.forget_host("never-seen") == 0


def test_forget_host_keeps_a_pool_its_network_still_uses(make_store) -> None:
    a, b = make_store(), make_store()
    p = pool(a, SUBNET, "h1")
    network(a, "h1", "dockA", p.pool_id)
    network(b, "h2", "dockB", p.pool_id)  # bound on host 2, which does not hold the pool
    assert b.forget_host("h1") == 0
    assert b.get_pool(p.pool_id).holders == ()
    assert [n.network_id for n in b.list_networks()] == ["dockA"]  # other hosts still bind it
    assert b.delete_network("h2", "dockB") is True  # and the unheld pool goes with it
    assert b.list_pools() == []


def test_unbind_undoes_a_failed_join_without_touching_the_network(make_store) -> None:
    a, b, pool_id, gw = two_hosts_on_one_network(make_store)
    b.unbind("h2", "dockB")
    b.unbind("h2", "dockB")  # retry: no-op
    assert b.bindings("h2") == {} and b.left_networks("h2") == set()
    assert [n.network_id for n in b.list_networks()] == ["dockA"]
    assert a.bindings("h1") == {"dockA": "dockA"}
    network(b, "h2", "dockB", pool_id)  # joining again works
    assert b.bindings("h2") == {"dockB": "dockA"}
