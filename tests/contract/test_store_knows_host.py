"""Store.knows_host: true while the store holds anything forget_host would remove of a host."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvstore import Host, InvalidRequest, Store

from .records import endpoint, network, pool

SUBNET = "10.1.0.0/24"


def registered(store: Store) -> None:
    store.register_host(Host("h1", "192.0.2.1"))


def with_an_endpoint(store: Store) -> None:
    network(store, "h2", "dockA")  # made and bound by host 2: host 1 only has the endpoint
    store.put_endpoint(endpoint("e1", "dockA", "h1"))


def with_a_binding(store: Store) -> None:
    network(store, "h1", "dockA")


def holding_a_pool(store: Store) -> None:
    pool(store, SUBNET, "h1")


def having_left_a_network(store: Store) -> None:
    network(store, "h2", "dockA")
    network(store, "h1", "dockA")
    store.put_endpoint(endpoint("e2", "dockA", "h2"))
    assert store.delete_network("h1", "dockA") is False  # a "left" mark, and no binding
    assert store.bindings("h1") == {} and store.left_networks("h1") == {"dockA"}


@pytest.mark.parametrize(
    "trace", [registered, with_an_endpoint, with_a_binding, holding_a_pool, having_left_a_network]
)
def test_each_trace_of_a_host_makes_it_known_until_forgotten(
    store: Store, trace: Callable[[Store], None]
) -> None:
    assert store.knows_host("h1") is False
    trace(store)
    assert store.knows_host("h1") is True
    assert store.knows_host("h3") is False
    store.forget_host("h1")
    assert store.knows_host("h1") is False


def test_an_empty_store_knows_no_host_and_a_bad_id_is_refused(store: Store) -> None:
    assert store.knows_host("never-seen") is False
    with pytest.raises(InvalidRequest):
        store.knows_host("a/b")
