"""IPv6 in the store, on every primitive: pools claimed and carved as IPv4 ones are (same subnet, same
PoolID), addresses reserved, adopted and freed in them, and dual-stack or IPv6-only networks whose pools
go with them."""

from __future__ import annotations

from ipaddress import IPv6Network

import pytest

from kvstore import (
    GATEWAY_OWNER,
    REQUEST_OWNER_PREFIX,
    Conflict,
    Endpoint,
    Exhausted,
    InvalidRequest,
    Network,
    Store,
)

V6_RANGE = "fd70:796f:7600::/48"
V4 = "10.1.0.0/24"
V6 = "fd00:1::/64"


def pool6(store: Store, subnet: str | None, host: str = "h1", ip_range: str | None = None):
    return store.request_pool(host, subnet, ip_range, V6_RANGE, 64)


def dual_network(store: Store, host: str, docker_id: str, v4: str | None, v6: str) -> Network:
    return store.create_network(
        host, docker_id, Network(network_id=docker_id, vni=0, pool_id=v4, pool6_id=v6)
    )


def test_v6_pool_is_shared_by_subnet_and_checked_for_overlap(make_store) -> None:
    a, b = make_store(), make_store()
    p = pool6(a, V6, "h1")
    assert (p.pool_id, p.subnet) == (V6, V6)
    assert pool6(b, V6, "h2").holders == ("h1", "h2")  # same subnet, same PoolID on another host
    with pytest.raises(Conflict, match="overlaps pool fd00:1::/64"):
        pool6(a, "fd00:1::/48")
    with pytest.raises(InvalidRequest, match="too small"):
        pool6(a, "fd00:2::/127")
    with pytest.raises(InvalidRequest, match="host bits"):
        pool6(a, "fd00:2::1/64")
    # an IPv4 pool never overlaps an IPv6 one, and both list (IPv4 first)
    a.request_pool("h1", V4, None, "10.200.0.0/16", 24)
    assert [q.subnet for q in a.list_pools()] == [V4, V6]


def test_default_v6_pools_are_distinct_64s_of_the_range(make_store) -> None:
    a, b = make_store(), make_store()
    carved = [pool6(a, None).subnet, pool6(b, None, "h2").subnet, pool6(a, None).subnet]
    nets = [IPv6Network(s) for s in carved]
    assert len(set(carved)) == 3
    assert all(n.prefixlen == 64 and n.subnet_of(IPv6Network(V6_RANGE)) for n in nets)
    assert carved[0] == "fd70:796f:7600::/64"


def test_v6_addresses(store: Store) -> None:
    p = pool6(store, "fd00:1::/126")
    assert store.reserve_address(p.pool_id, GATEWAY_OWNER, "h1") == "fd00:1::1"
    assert store.reserve_address(p.pool_id, "m1", "h1") == "fd00:1::2"
    assert store.reserve_address(p.pool_id, "m1", "h1") == "fd00:1::2"  # resent: the same
    # no broadcast in IPv6: the last address is a container's
    assert store.reserve_address(p.pool_id, "m2", "h1") == "fd00:1::3"
    with pytest.raises(Exhausted):
        store.reserve_address(p.pool_id, "m3", "h1")
    store.release_address(p.pool_id, "fd00:1:0:0::2")  # any spelling of the address
    assert store.list_addresses(p.pool_id) == {"fd00:1::1": GATEWAY_OWNER, "fd00:1::3": "m2"}
    assert store.reserve_address(p.pool_id, "m4", "h1", "fd00:1::0002") == "fd00:1::2"
    with pytest.raises(Conflict, match="network address"):
        store.reserve_address(p.pool_id, "m5", "h1", "fd00:1::")
    with pytest.raises(Conflict, match="outside"):
        store.reserve_address(p.pool_id, "m5", "h1", "10.1.0.5")


def test_dual_stack_network_binds_by_its_v4_pool_and_takes_both_pools_along(make_store) -> None:
    a, b = make_store(), make_store()
    for store, host in ((a, "h1"), (b, "h2")):
        store.request_pool(host, V4, None, "10.200.0.0/16", 24)
        pool6(store, V6, host)
    made = dual_network(a, "h1", "dockA", V4, V6)
    assert dual_network(b, "h2", "dockB", V4, V6) == made  # the same cluster network on h2
    for store, host in ((a, "h1"), (b, "h2")):
        store.release_pool(host, V4)
        store.release_pool(host, V6)
    assert {p.subnet for p in a.list_pools()} == {V4, V6}  # still bound: kept for the network
    assert a.delete_network("h1", "dockA") is True
    assert b.delete_network("h2", "dockB") is False  # gone already
    assert a.list_pools() == []


def test_v6_only_network_is_known_by_its_v6_pool(make_store) -> None:
    a, b = make_store(), make_store()
    pool6(a, V6, "h1")
    pool6(b, V6, "h2")
    made = dual_network(a, "h1", "dockA", None, V6)
    assert made.pool_ids == (V6,)
    assert dual_network(b, "h2", "dockB", None, V6).network_id == made.network_id
    a.release_pool("h1", V6)
    b.release_pool("h2", V6)
    assert b.delete_network("h2", "dockB") is True  # no endpoints anywhere: gone for every host
    assert a.delete_network("h1", "dockA") is False
    assert a.list_pools() == []


def test_endpoint_adopts_and_forget_host_frees_both_addresses(make_store) -> None:
    a = make_store()
    a.request_pool("h1", V4, None, "10.200.0.0/16", 24)
    pool6(a, V6)
    net = dual_network(a, "h1", "dockA", V4, V6)
    four = a.reserve_address(V4, REQUEST_OWNER_PREFIX + "x", "h1")
    six = a.reserve_address(V6, REQUEST_OWNER_PREFIX + "y", "h1")
    mac = "02:42:0a:01:00:01"
    endpoint = Endpoint("e1", net.network_id, "h1", "192.0.2.1", mac, f"{four}/24", address6=f"{six}/64")
    assert a.put_endpoint(endpoint, adopt_from_pool=V4, adopt6_from_pool=V6) == endpoint
    assert a.get_endpoint("e1").ip6 == six
    assert a.list_addresses(V4) == {four: mac} and a.list_addresses(V6) == {six: mac}
    assert a.put_endpoint(endpoint, adopt_from_pool=V4, adopt6_from_pool=V6) == endpoint  # resent
    assert a.forget_host("h1") == 1
    assert a.list_addresses(V6) == {} and a.list_addresses(V4) == {}
