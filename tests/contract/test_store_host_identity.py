"""Host registration refuses a cloned identity: a host id alive in the store at another address."""

from __future__ import annotations

import threading
import time

import pytest

from kvstore import Host, IdentityConflict, Store

pytestmark = pytest.mark.faults  # the security cases of the fault matrix (issue 12)


def _addresses(store: Store) -> dict[str, str]:
    return {h.host_id: h.address for h in store.list_hosts()}


def test_a_live_host_id_at_another_address_is_refused_with_the_cause_and_the_fix(make_store) -> None:
    original, clone = make_store(), make_store()
    original.register_host(Host("h1", "192.0.2.1", "one"), ttl=30)
    with pytest.raises(IdentityConflict) as refused:
        clone.register_host(Host("h1", "192.0.2.2", "two"), ttl=30)
    message = str(refused.value)
    assert "192.0.2.1 (one)" in message and "192.0.2.2" in message
    assert "cloned" in message and "remove STATE_DIR/host-id" in message and "restart the agent" in message
    assert _addresses(clone) == {"h1": "192.0.2.1"}  # nothing overwritten
    original.register_host(Host("h1", "192.0.2.1", "one"), ttl=30)  # the original keeps refreshing
    assert _addresses(original) == {"h1": "192.0.2.1"}


def test_the_same_address_takes_over_and_the_registering_store_may_move(make_store) -> None:
    before_restart, after_restart = make_store(), make_store()
    before_restart.register_host(Host("h1", "192.0.2.1"), ttl=30)
    after_restart.register_host(Host("h1", "192.0.2.1"), ttl=30)  # an agent restarted: a new lease
    after_restart.register_host(Host("h1", "192.0.2.11"), ttl=30)  # its own record: the address moved
    assert _addresses(after_restart) == {"h1": "192.0.2.11"}


def test_a_clone_registers_once_the_other_record_expired_and_the_first_then_notices(make_store) -> None:
    first, clone = make_store(), make_store()
    first.register_host(Host("h1", "192.0.2.1"), ttl=1)  # then silent: say, partitioned
    deadline = time.monotonic() + 8  # etcd rounds a 1 s lease up to its minimum (2 s)
    while first.list_hosts() and time.monotonic() < deadline:
        time.sleep(0.2)
    clone.register_host(Host("h1", "192.0.2.2"), ttl=30)
    with pytest.raises(IdentityConflict, match="192.0.2.2"):
        first.register_host(Host("h1", "192.0.2.1"), ttl=1)  # back: its record is another host's now
    assert _addresses(first) == {"h1": "192.0.2.2"}


def _race(stores: list[Store], host_id: str) -> list[str]:
    """Register ``host_id`` from each store at one instant, each at its own address: what each got."""
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def register(store: Store, address: str) -> None:
        barrier.wait()
        try:
            store.register_host(Host(host_id, address), ttl=30)
            outcomes.append(address)
        except IdentityConflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=register, args=(s, f"192.0.2.{i + 1}")) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_of_two_clones_registering_at_once_exactly_one_wins(make_store) -> None:
    for n in range(10):
        stores = [make_store(), make_store()]
        outcomes = _race(stores, f"h{n}")
        winner = [o for o in outcomes if o != "refused"]
        assert len(winner) == 1 and outcomes.count("refused") == 1, outcomes
        assert _addresses(stores[0])[f"h{n}"] == winner[0]
