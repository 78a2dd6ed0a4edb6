"""The Store contract (the docstrings of kvstore/store.py, networks.py, ipam.py), run unchanged over
every key-value primitive: etcd, SQLite in a file, SQLite in memory."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from kvstore import (
    GATEWAY_OWNER,
    REQUEST_OWNER_PREFIX,
    Conflict,
    Endpoint,
    Exhausted,
    Host,
    InvalidRequest,
    NotFound,
    Store,
)
from kvstore.alloc import VNI_MAX, VNI_MIN
from tests.watching import Collector

from .records import endpoint, network, pool


# -- hosts ------------------------------------------------------------------------------------------
def test_hosts_register_refresh_and_expire(store: Store) -> None:
    store.register_host(Host("h1", "192.0.2.1", "one"), ttl=30)
    store.register_host(Host("h2", "192.0.2.2"), ttl=1)
    store.register_host(Host("h1", "192.0.2.11", "one"), ttl=30)  # refresh with a new address
    assert {h.host_id: h.address for h in store.list_hosts()} == {"h1": "192.0.2.11", "h2": "192.0.2.2"}
    deadline = time.monotonic() + 8  # etcd rounds a 1 s lease up to its minimum (2 s)
    while len(store.list_hosts()) == 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [h.host_id for h in store.list_hosts()] == ["h1"]
    store.register_host(Host("h2", "192.0.2.2"), ttl=30)  # back after expiry
    assert len(store.list_hosts()) == 2


# -- pools ------------------------------------------------------------------------------------------
def test_same_subnet_gives_same_pool_on_every_host(make_store) -> None:
    a, b = make_store(), make_store()
    first = pool(a, "10.1.0.0/24", "h1")
    again = pool(a, "10.1.0.0/24", "h1")  # a retried request
    other = pool(b, "10.1.0.0/24", "h2")
    assert first.pool_id == again.pool_id == other.pool_id == "10.1.0.0/24"
    assert other.holders == ("h1", "h2")
    assert a.get_pool("10.1.0.0/24").holders == ("h1", "h2")


def test_pool_conflicts_and_bad_input(store: Store) -> None:
    pool(store, "10.1.0.0/16", ip_range="10.1.4.0/24")
    with pytest.raises(Conflict, match="overlaps pool 10.1.0.0/16"):
        pool(store, "10.1.2.0/24")
    with pytest.raises(Conflict, match="overlaps"):
        pool(store, "10.0.0.0/8")
    with pytest.raises(Conflict, match="ip range"):
        pool(store, "10.1.0.0/16", "h2", ip_range="10.1.5.0/24")
    with pytest.raises(Conflict, match="ip range"):
        pool(store, "10.1.0.0/16", "h2")
    assert pool(store, "10.1.0.0/16", "h2", ip_range="10.1.4.0/24").holders == ("h1", "h2")
    for subnet, ip_range in [("10.300.0.0/24", None), ("10.2.0.1/24", None), ("10.2.0.0/24", "10.3.0.0/28")]:
        with pytest.raises(InvalidRequest):
            pool(store, subnet, ip_range=ip_range)
    with pytest.raises(NotFound):
        store.get_pool("10.9.0.0/24")


def test_default_range_carving(store: Store) -> None:
    pool(store, "10.200.1.0/24")  # claimed by hand: carving goes around it
    carved = [pool(store, None).subnet for _ in range(3)]
    assert carved == ["10.200.0.0/24", "10.200.2.0/24", "10.200.3.0/24"]
    nets = [IPv4Network(s) for s in [*carved, "10.200.1.0/24"]]
    assert not any(x.overlaps(y) for i, x in enumerate(nets) for y in nets[i + 1 :])
    small = [store.request_pool("h1", None, None, "10.201.0.0/29", 30).subnet for _ in range(2)]
    assert small == ["10.201.0.0/30", "10.201.0.4/30"]
    with pytest.raises(Exhausted):
        store.request_pool("h1", None, None, "10.201.0.0/29", 30)


def test_list_pools(make_store) -> None:
    a, b = make_store(), make_store()
    assert a.list_pools() == []
    pool(a, "10.10.0.0/24", "h1")
    pool(a, "10.9.0.0/24", "h1", ip_range="10.9.0.128/25")
    pool(b, "10.10.0.0/24", "h2")
    assert [(p.pool_id, p.ip_range, p.holders) for p in b.list_pools()] == [
        ("10.9.0.0/24", "10.9.0.128/25", ("h1",)),  # by subnet, not by text
        ("10.10.0.0/24", None, ("h1", "h2")),
    ]


def test_release_pool_by_last_holder_deletes_it(make_store) -> None:
    a, b = make_store(), make_store()
    p = pool(a, "10.1.0.0/24", "h1")
    pool(b, "10.1.0.0/24", "h2")
    a.reserve_address(p.pool_id, GATEWAY_OWNER, "h1")
    a.reserve_address(p.pool_id, "02:00:00:00:00:01", "h1")
    a.release_pool("h3", p.pool_id)  # not a holder
    a.release_pool("h1", "10.9.0.0/24")  # unknown
    a.release_pool("h1", p.pool_id)
    assert b.get_pool(p.pool_id).holders == ("h2",)
    assert len(b.list_addresses(p.pool_id)) == 2
    b.release_pool("h2", p.pool_id)
    with pytest.raises(NotFound):
        a.get_pool(p.pool_id)
    assert a.list_addresses(p.pool_id) == {}
    again = pool(a, "10.1.0.0/24", "h1", ip_range="10.1.0.128/25")  # free for a new shape
    assert a.reserve_address(again.pool_id, "02:00:00:00:00:01", "h1") == "10.1.0.128"


# -- addresses --------------------------------------------------------------------------------------
def test_addresses_round_robin_and_specific(store: Store) -> None:
    p = pool(store, "10.1.0.0/24")
    assert store.reserve_address(p.pool_id, GATEWAY_OWNER, "h1") == "10.1.0.1"
    assert store.reserve_address(p.pool_id, "m2", "h1") == "10.1.0.2"
    assert store.reserve_address(p.pool_id, "m3", "h1") == "10.1.0.3"
    store.release_address(p.pool_id, "10.1.0.2")
    assert store.reserve_address(p.pool_id, "m4", "h1") == "10.1.0.4"  # after the last one, not .2
    assert store.reserve_address(p.pool_id, "m9", "h1", "10.1.0.9") == "10.1.0.9"
    assert store.reserve_address(p.pool_id, "m9", "h1", "10.1.0.9") == "10.1.0.9"  # retry
    assert store.reserve_address(p.pool_id, "m9", "h1") == "10.1.0.9"  # owner already holds one
    with pytest.raises(Conflict, match="already in use"):
        store.reserve_address(p.pool_id, "m5", "h1", "10.1.0.9")
    with pytest.raises(Conflict, match="already holds"):
        store.reserve_address(p.pool_id, "m9", "h1", "10.1.0.10")
    for bad, why in [("10.1.1.5", "outside"), ("10.1.0.0", "network"), ("10.1.0.255", "broadcast")]:
        with pytest.raises(Conflict, match=why):
            store.reserve_address(p.pool_id, "m6", "h1", bad)
    with pytest.raises(InvalidRequest, match="10.1.0.300 is not an IP address"):
        store.reserve_address(p.pool_id, "m6", "h1", "10.1.0.300")
    with pytest.raises(NotFound):
        store.reserve_address("10.9.0.0/24", "m6", "h1")
    assert store.list_addresses(p.pool_id) == {
        "10.1.0.1": GATEWAY_OWNER,
        "10.1.0.3": "m3",
        "10.1.0.4": "m4",
        "10.1.0.9": "m9",
    }
    assert store.list_addresses("10.9.0.0/24") == {}


def test_ip_range_and_exhaustion(store: Store) -> None:
    p = pool(store, "10.1.0.0/24", ip_range="10.1.0.252/30")
    got = [store.reserve_address(p.pool_id, f"m{i}", "h1") for i in range(3)]
    assert got == ["10.1.0.252", "10.1.0.253", "10.1.0.254"]  # .255 is the subnet's broadcast
    with pytest.raises(Exhausted, match="has no free address"):
        store.reserve_address(p.pool_id, "m4", "h1")
    assert store.reserve_address(p.pool_id, "m5", "h1", "10.1.0.7") == "10.1.0.7"  # outside the range
    tiny = pool(store, "10.2.0.0/30")
    assert [store.reserve_address(tiny.pool_id, o, "h1") for o in ("a", "b")] == ["10.2.0.1", "10.2.0.2"]
    with pytest.raises(Exhausted):
        store.reserve_address(tiny.pool_id, "c", "h1")
    store.release_address(tiny.pool_id, "10.2.0.1")
    assert store.reserve_address(tiny.pool_id, "c", "h1") == "10.2.0.1"  # wraps around


def test_gateway_is_shared_and_outlives_release_address(make_store) -> None:
    a, b = make_store(), make_store()
    p = pool(a, "10.1.0.0/24", "h1")
    pool(b, "10.1.0.0/24", "h2")
    gw = a.reserve_address(p.pool_id, GATEWAY_OWNER, "h1")
    assert b.reserve_address(p.pool_id, GATEWAY_OWNER, "h2") == gw
    assert b.reserve_address(p.pool_id, GATEWAY_OWNER, "h2", gw) == gw
    b.release_address(p.pool_id, gw)
    b.release_address(p.pool_id, "10.1.0.77")  # free: no-op
    b.release_address("10.9.0.0/24", "10.9.0.1")  # unknown pool: no-op
    assert a.list_addresses(p.pool_id) == {gw: GATEWAY_OWNER}


def test_adopt_address_hands_a_request_keys_address_to_a_mac(make_store) -> None:
    a, b = make_store(), make_store()
    p = pool(a, "10.1.0.0/24", "h1")
    gw = a.reserve_address(p.pool_id, GATEWAY_OWNER, "h1")
    mine = a.reserve_address(p.pool_id, REQUEST_OWNER_PREFIX + "1", "h1")
    theirs = b.reserve_address(p.pool_id, REQUEST_OWNER_PREFIX + "2", "h2")
    assert a.adopt_address(p.pool_id, mine, "h1", "02:42:0a:01:00:02") is True
    assert a.adopt_address(p.pool_id, mine, "h1", "02:42:0a:01:00:02") is True  # resent: no change
    assert a.adopt_address(p.pool_id, theirs, "h1", "02:00:00:00:00:09") is False  # another host's
    assert a.adopt_address(p.pool_id, gw, "h1", "02:00:00:00:00:09") is False
    assert a.adopt_address(p.pool_id, "10.1.0.200", "h1", "02:00:00:00:00:09") is False  # free
    assert a.list_addresses(p.pool_id) == {
        gw: GATEWAY_OWNER,
        mine: "02:42:0a:01:00:02",
        theirs: REQUEST_OWNER_PREFIX + "2",
    }
    # owned by the MAC now: a request with that MAC is a retry, a release frees both keys
    assert a.reserve_address(p.pool_id, "02:42:0a:01:00:02", "h1") == mine
    a.release_address(p.pool_id, mine)
    assert a.reserve_address(p.pool_id, "02:00:00:00:00:09", "h1", mine) == mine


def test_release_from_one_owner_only(make_store) -> None:
    a = make_store()
    p = pool(a, "10.1.0.0/24", "h1")
    gw = a.reserve_address(p.pool_id, GATEWAY_OWNER, "h1")
    left = a.reserve_address(p.pool_id, REQUEST_OWNER_PREFIX + "1", "h1")  # its CreateEndpoint failed
    taken = a.reserve_address(p.pool_id, REQUEST_OWNER_PREFIX + "2", "h1")
    assert a.adopt_address(p.pool_id, taken, "h1", "02:42:0a:01:00:03") is True  # an endpoint has it
    for address in (left, taken, gw, "10.1.0.200"):
        a.release_address(p.pool_id, address, only_owner=REQUEST_OWNER_PREFIX + "1")
    assert a.list_addresses(p.pool_id) == {gw: GATEWAY_OWNER, taken: "02:42:0a:01:00:03"}
    a.release_address(p.pool_id, taken, only_owner="02:42:0a:01:00:03")
    assert a.list_addresses(p.pool_id) == {gw: GATEWAY_OWNER}


# -- networks ---------------------------------------------------------------------------------------
def test_network_create_bind_and_lookups(make_store) -> None:
    a, b = make_store(), make_store()
    p = pool(a, "10.1.0.0/24", "h1")
    created = network(a, "h1", "dockA", p.pool_id)
    assert VNI_MIN <= created.vni <= VNI_MAX and created.created_by == "h1"
    assert network(a, "h1", "dockA", p.pool_id) == created  # retry
    bound = network(b, "h2", "dockB", p.pool_id)  # the same network seen from host 2
    assert (bound.network_id, bound.vni) == ("dockA", created.vni)
    with pytest.raises(Conflict, match="already binds Docker network dockB"):
        network(b, "h2", "dockC", p.pool_id)
    assert b.network_for("h2", "dockB").network_id == "dockA"
    assert a.bindings("h1") == {"dockA": "dockA"} and b.bindings("h2") == {"dockB": "dockA"}
    with pytest.raises(NotFound):
        a.network_for("h1", "dockB")
    with pytest.raises(NotFound):
        a.get_network("nope")
    b.set_network_name("dockA", "blue")
    b.set_network_name("nope", "red")  # unknown: no-op
    assert a.get_network("dockA").name == "blue"
    assert [n.network_id for n in a.list_networks()] == ["dockA"]
    plain = network(a, "h1", "dockD")  # Docker's default IPAM: no pool
    assert plain.pool_id is None and plain.vni != created.vni


def test_vnis_are_unique_and_reused(store: Store) -> None:
    nets = [network(store, "h1", f"d{i}") for i in range(5)]
    vnis = [n.vni for n in nets]
    assert vnis == list(range(VNI_MIN, VNI_MIN + 5))
    store.delete_network("h1", "d2")
    assert network(store, "h1", "d9").vni == vnis[2]


# -- endpoints --------------------------------------------------------------------------------------
def test_put_endpoint_adopts_its_address_in_the_same_write(make_store) -> None:
    a, b = make_store(), make_store()
    p = pool(a, "10.1.0.0/24", "h1")
    net = network(a, "h1", "dockA", p.pool_id)
    mine = a.reserve_address(p.pool_id, REQUEST_OWNER_PREFIX + "1", "h1")
    theirs = b.reserve_address(p.pool_id, REQUEST_OWNER_PREFIX + "2", "h2")
    mac = "02:42:0a:01:00:02"
    e1 = a.put_endpoint(endpoint("e1", net.network_id, "h1", mac, f"{mine}/24"), adopt_from_pool=p.pool_id)
    assert a.put_endpoint(e1, adopt_from_pool=p.pool_id) == e1  # resent: no change
    # another host's address is left as it is, as adopt_address leaves it; the record is still written
    a.put_endpoint(endpoint("e2", net.network_id, "h1", "02:00:00:00:00:09", f"{theirs}/24"), p.pool_id)
    assert a.list_addresses(p.pool_id) == {mine: mac, theirs: REQUEST_OWNER_PREFIX + "2"}
    assert [e.endpoint_id for e in b.list_endpoints(net.network_id)] == ["e1", "e2"]
    assert a.reserve_address(p.pool_id, mac, "h1") == mine  # the MAC owns it: a request with it is a retry


def test_endpoint_crud(store: Store) -> None:
    net = network(store, "h1", "dockA")
    other = network(store, "h1", "dockB")
    with pytest.raises(NotFound):
        store.put_endpoint(endpoint("e1", "nope", "h1"))
    e1 = store.put_endpoint(endpoint("e1", net.network_id, "h1"))
    store.put_endpoint(endpoint("e2", other.network_id, "h1"))
    assert store.get_endpoint("e1") == e1
    renamed = store.put_endpoint(Endpoint(**{**e1.__dict__, "container_name": "web"}))
    assert store.get_endpoint("e1").container_name == "web" == renamed.container_name
    assert [e.endpoint_id for e in store.list_endpoints()] == ["e1", "e2"]
    assert [e.endpoint_id for e in store.list_endpoints(other.network_id)] == ["e2"]
    store.delete_endpoint("e1")
    store.delete_endpoint("e1")
    with pytest.raises(NotFound):
        store.get_endpoint("e1")
    assert [e.endpoint_id for e in store.list_endpoints()] == ["e2"]


def test_set_endpoint_name(store: Store) -> None:
    net = network(store, "h1", "dockA")
    e1 = store.put_endpoint(endpoint("e1", net.network_id, "h1"))
    _, rev = store.endpoints_at(net.network_id)
    seen = Collector()
    watch = store.watch_endpoints(net.network_id, rev + 1, seen)
    store.set_endpoint_name("e1", "web")
    store.set_endpoint_name("e1", "web")  # unchanged: no write
    store.set_endpoint_name("nope", "db")  # unknown: no-op, never created
    assert store.get_endpoint("e1") == Endpoint(**{**e1.__dict__, "container_name": "web"})
    events = seen.items()
    watch.cancel()
    assert [(e.kind, e.action, e.key_id) for e in events] == [("endpoint", "put", "e1")]
    assert events[0].record.container_name == "web"
    store.delete_endpoint("e1")
    store.set_endpoint_name("e1", "late")  # deleted: stays deleted
    with pytest.raises(NotFound):
        store.get_endpoint("e1")
    assert store.list_endpoints() == []


def test_set_endpoint_name_with_aliases(store: Store) -> None:
    net = network(store, "h1", "dockA")
    store.put_endpoint(endpoint("e1", net.network_id, "h1"))
    store.set_endpoint_name("e1", "web", ("www", "api"))
    got = store.get_endpoint("e1")
    assert (got.container_name, got.aliases) == ("web", ("www", "api"))
    store.set_endpoint_name("e1", "web", ())  # an alias removed is a change too
    assert store.get_endpoint("e1").aliases == ()
    _, rev = store.endpoints_at(net.network_id)
    store.set_endpoint_name("e1", "web", ())
    assert store.endpoints_at(net.network_id)[1] == rev  # same names: no write


# -- listing and scoped watches ---------------------------------------------------------------------
def test_list_then_watch_each_scope(store: Store) -> None:
    net = network(store, "h1", "dockA")
    other = network(store, "h1", "dockB")
    store.put_endpoint(endpoint("e0", net.network_id, "h1"))
    networks, networks_rev = store.networks_at()
    endpoints, endpoints_rev = store.endpoints_at(net.network_id)
    bindings, bindings_rev = store.bindings_at("h1")
    assert [n.network_id for n in networks] == ["dockA", "dockB"] and [e.endpoint_id for e in endpoints] == [
        "e0"
    ]
    assert bindings == {"dockA": "dockA", "dockB": "dockB"}
    seen_networks, seen_endpoints, seen_bindings = Collector(), Collector(), Collector()
    watches = [
        store.watch_networks(networks_rev + 1, seen_networks),
        store.watch_endpoints(net.network_id, endpoints_rev + 1, seen_endpoints),
        store.watch_bindings("h1", bindings_rev + 1, seen_bindings),
    ]
    store.put_endpoint(endpoint("e1", net.network_id, "h1"))
    store.put_endpoint(endpoint("x1", other.network_id, "h1"))  # another network: not in this scope
    store.set_network_name(net.network_id, "blue")
    store.delete_endpoint("e0")
    store.unbind("h1", "dockB")
    pool(store, "10.1.0.0/24")  # neither a network, an endpoint nor a binding
    started = time.monotonic()
    endpoint_events = seen_endpoints.items()
    assert time.monotonic() - started < 5
    assert [(e.kind, e.action, e.key_id) for e in endpoint_events] == [
        ("endpoint", "put", "e1"),
        ("endpoint", "delete", "e0"),
    ]
    assert endpoint_events[0].record.endpoint_id == "e1" and endpoint_events[1].record is None
    network_events = seen_networks.items(quiet=0.1)
    assert [(e.kind, e.action, e.key_id, e.record.name) for e in network_events] == [
        ("network", "put", "dockA", "blue")
    ]
    assert [(e.kind, e.action, e.key_id, e.record) for e in seen_bindings.items(quiet=0.1)] == [
        ("binding", "delete", "dockB", None)
    ]
    assert (
        endpoints_rev < endpoint_events[0].revision < network_events[0].revision < endpoint_events[1].revision
    )
    for watch in watches:
        watch.cancel()
        watch.cancel()  # idempotent
    store.put_endpoint(endpoint("e2", net.network_id, "h1"))
    assert seen_endpoints.items(quiet=0.3) == []  # cancelled: nothing more


def test_watch_sees_writes_of_another_instance(make_store) -> None:
    a, b = make_store(), make_store()
    _, rev = a.networks_at()
    seen = Collector()
    watch = a.watch_networks(rev + 1, seen)
    network(b, "h2", "dockB")
    first = seen.first()
    assert (first.kind, first.action, first.key_id) == ("network", "put", "dockB")
    watch.cancel()


def test_state_survives_reopen(make_store) -> None:
    first = make_store()
    p = pool(first, "10.1.0.0/24")
    gw = first.reserve_address(p.pool_id, GATEWAY_OWNER, "h1")
    net = network(first, "h1", "dockA", p.pool_id)
    first.put_endpoint(endpoint("e1", net.network_id, "h1"))
    _, rev = first.networks_at()
    first.close()
    reopened = make_store()
    assert reopened.get_pool(p.pool_id) == p
    assert reopened.list_addresses(p.pool_id) == {gw: GATEWAY_OWNER}
    assert reopened.network_for("h1", "dockA") == net
    assert reopened.get_endpoint("e1").network_id == net.network_id
    assert reopened.networks_at()[1] == rev
    assert reopened.reserve_address(p.pool_id, "m1", "h1") == str(IPv4Address(gw) + 1)
