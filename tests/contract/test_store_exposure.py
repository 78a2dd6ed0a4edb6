"""A host's exposure (`pyoverlay expose`) in the store: an Endpoint of kind "host" whose address its own
id owns. It never keeps a network in use, goes with the network, with its host leaving the network, and
with forget-host, address included. Older records without a kind load as containers."""

from __future__ import annotations

import json

from kvstore import CONTAINER_KIND, GATEWAY_OWNER, HOST_KIND, Endpoint, Host, Store
from kvstore.keys import endpoint_key
from kvstore.kv import Put
from tests.watching import Collector

from .records import endpoint, network, pool

SUBNET = "10.1.0.0/24"


def expose(store: Store, host: str, network_id: str, pool_id: str) -> tuple[str, str]:
    """As plugin/services/exposure.py does it: (endpoint id, address)."""
    endpoint_id = f"host-{host}-{network_id}"
    address = store.reserve_address(pool_id, endpoint_id, host)
    store.put_endpoint(
        Endpoint(
            endpoint_id, network_id, host, "192.0.2.9", "02:42:0a:01:00:fe", f"{address}/24", kind=HOST_KIND
        ),
    )
    return endpoint_id, address


def shared_network(make_store) -> tuple[Store, Store, str]:
    """h1 (store a) and h2 (store b) bind network dockA on one pool, as Docker makes it."""
    a, b = make_store(), make_store()
    p = pool(a, SUBNET, "h1")
    a.reserve_address(p.pool_id, GATEWAY_OWNER, "h1")
    network(a, "h1", "dockA", p.pool_id)
    pool(b, SUBNET, "h2")
    network(b, "h2", "dockB", p.pool_id)
    return a, b, p.pool_id


def test_a_record_without_kind_is_a_container_and_the_kind_round_trips(store: Store) -> None:
    p = pool(store, SUBNET, "h1")
    network(store, "h1", "dockA", p.pool_id)
    old = endpoint("e1", "dockA", "h1").to_json()
    del old["kind"]
    store._kv.txn([], [Put(endpoint_key("dockA", "e1"), json.dumps(old))])  # as written before "kind"
    assert store.endpoints_at("dockA")[0][0].kind == CONTAINER_KIND
    assert store.endpoints_at("dockA")[0][0].address_owner == "02:00:00:00:00:01"
    _, revision = store.endpoints_at("dockA")
    seen = Collector()
    watch = store.watch_endpoints("dockA", revision + 1, seen)
    endpoint_id, address = expose(store, "h1", "dockA", p.pool_id)
    [event] = seen.items(quiet=0.5)
    watch.cancel()
    assert event.record.kind == HOST_KIND and event.record.address_owner == endpoint_id
    assert store.get_endpoint(endpoint_id) == event.record
    assert store.list_addresses(p.pool_id)[address] == endpoint_id


def test_an_exposure_elsewhere_does_not_keep_a_network(make_store) -> None:
    a, b, pool_id = shared_network(make_store)
    expose(a, "h1", "dockA", pool_id)
    b.release_pool("h2", pool_id)
    assert b.delete_network("h2", "dockB") is True  # no container anywhere: deleted, exposure too
    assert b.list_networks() == [] and b.list_endpoints() == []


def test_leaving_a_network_removes_the_hosts_exposure_and_frees_its_address(make_store) -> None:
    a, b, pool_id = shared_network(make_store)
    address = b.reserve_address(pool_id, "02:00:00:00:00:02", "h2")
    b.put_endpoint(endpoint("e2", "dockA", "h2", "02:00:00:00:00:02", f"{address}/24"))
    exposure, exposed = expose(a, "h1", "dockA", pool_id)
    assert a.delete_network("h1", "dockA") is False  # h2's container keeps it: h1 leaves
    assert [e.endpoint_id for e in b.list_endpoints()] == ["e2"]
    assert exposed not in b.list_addresses(pool_id)
    assert exposure not in b.list_addresses(pool_id).values()
    assert b.reserve_address(pool_id, "02:00:00:00:00:03", "h2", exposed) == exposed  # free for a container


def test_forget_host_frees_its_exposures_address(make_store) -> None:
    a, b, pool_id = shared_network(make_store)
    a.register_host(Host("h1", "192.0.2.1"))
    exposure, exposed = expose(a, "h1", "dockA", pool_id)
    assert b.forget_host("h1") == 1
    assert b.list_endpoints() == []
    assert exposed not in b.list_addresses(pool_id) and exposure not in b.list_addresses(pool_id).values()
