"""desired_state / diff: the pure part of the event loop (no root, no kernel)."""

import random

from driver.names import bridge_name, endpoint_prefix_from_name, veth_names, vni_from_name, vxlan_name
from driver.peers import FLOOD_MAC, Peer, PeerChanges, PeerState, desired_state, diff

A = Peer(mac="02:42:0A:01:00:03", ip="10.1.0.3", vtep="192.0.2.2")
B = Peer(mac="02:42:0a:01:00:04", ip="10.1.0.4", vtep="192.0.2.3")
C = Peer(mac="02:42:0a:01:00:05", ip=None, vtep="192.0.2.3")


def test_desired_state_has_unicast_flood_and_neighbour_entries() -> None:
    state = desired_state([A, B, C], ["192.0.2.2", "192.0.2.3"])

    assert state.fdb == {
        ("02:42:0a:01:00:03", "192.0.2.2"),
        ("02:42:0a:01:00:04", "192.0.2.3"),
        ("02:42:0a:01:00:05", "192.0.2.3"),
        (FLOOD_MAC, "192.0.2.2"),
        (FLOOD_MAC, "192.0.2.3"),
    }
    assert state.neigh == {("10.1.0.3", "02:42:0a:01:00:03"), ("10.1.0.4", "02:42:0a:01:00:04")}


def test_desired_state_normalizes_like_the_kernel_reports() -> None:
    state = desired_state([Peer(mac="02-42-0A-01-00-03", ip=" 10.1.0.3", vtep="192.0.2.2")], [])
    assert state == PeerState(
        fdb=frozenset({("02:42:0a:01:00:03", "192.0.2.2")}),
        neigh=frozenset({("10.1.0.3", "02:42:0a:01:00:03")}),
    )


def test_flood_entries_without_peers_and_nothing_without_either() -> None:
    assert desired_state([], ["192.0.2.9"]) == PeerState(fdb=frozenset({(FLOOD_MAC, "192.0.2.9")}))
    assert desired_state([], []) == PeerState()


def test_conflicting_peers_resolve_the_same_way_in_any_order() -> None:
    moved = Peer(mac=A.mac, ip="10.1.0.9", vtep="192.0.2.9")  # same MAC seen behind another VTEP
    same_ip = Peer(mac="02:42:0a:01:00:99", ip=A.ip, vtep="192.0.2.8")  # same IP, other MAC
    peers = [A, B, C, moved, same_ip]
    results = {desired_state(random.sample(peers, len(peers)), []) for _ in range(20)}

    assert len(results) == 1
    (state,) = results
    macs = [mac for mac, _ in state.fdb]
    ips = [ip for ip, _ in state.neigh]
    assert len(macs) == len(set(macs)) and len(ips) == len(set(ips))  # the kernel holds one of each
    assert ("02:42:0a:01:00:03", "192.0.2.2") in state.fdb
    assert ("10.1.0.9", "02:42:0a:01:00:03") not in state.neigh  # the losing claim brings no IP


def test_a_peer_cannot_claim_the_flood_mac() -> None:
    assert desired_state([Peer(mac=FLOOD_MAC, ip="10.1.0.1", vtep="192.0.2.2")], []) == PeerState()


def test_diff_adds_and_removes_only_the_differences() -> None:
    actual = desired_state([A, B], ["192.0.2.2", "192.0.2.3"])
    desired = desired_state([B, C], ["192.0.2.3"])

    changes = diff(desired, actual)

    assert changes.add_fdb == {("02:42:0a:01:00:05", "192.0.2.3")}
    assert changes.del_fdb == {("02:42:0a:01:00:03", "192.0.2.2"), (FLOOD_MAC, "192.0.2.2")}
    assert changes.add_neigh == frozenset()
    assert changes.del_neigh == {("10.1.0.3", "02:42:0a:01:00:03")}


def test_diff_of_equal_states_is_empty_and_falsy() -> None:
    state = desired_state([A, B, C], ["192.0.2.2"])
    assert diff(state, state) == PeerChanges()
    assert not diff(state, state)
    assert diff(state, PeerState())


def test_diff_of_a_moved_mac_removes_old_and_adds_new() -> None:
    before = desired_state([A], [])
    after = desired_state([Peer(mac=A.mac, ip=A.ip, vtep="192.0.2.7")], [])

    changes = diff(after, before)

    assert changes.del_fdb == {("02:42:0a:01:00:03", "192.0.2.2")}
    assert changes.add_fdb == {("02:42:0a:01:00:03", "192.0.2.7")}
    assert not changes.add_neigh and not changes.del_neigh


def test_names_are_deterministic_and_fit_the_kernel_limit() -> None:
    endpoint_id = "f" * 64
    assert bridge_name(16777215) == "pobr16777215" and vxlan_name(1) == "povx1"
    assert veth_names(endpoint_id) == ("poh" + "f" * 12, "poc" + "f" * 12)
    assert all(len(name) <= 15 for name in (bridge_name(16777215), *veth_names(endpoint_id)))
    assert vni_from_name("pobr4096") == 4096 and vni_from_name("povx7") == 7
    assert vni_from_name("pobr0") is None and vni_from_name("pobr99999999") is None
    assert vni_from_name("docker0") is None
    assert endpoint_prefix_from_name("poh0123456789ab") == "0123456789ab"
    assert endpoint_prefix_from_name("poc0123456789ab") is None


def test_ipv6_addresses_get_neighbour_entries_next_to_ipv4_ones() -> None:
    peers = [
        Peer("02:42:0a:01:00:03", "10.1.0.3", "192.0.2.2", ip6="FD00:1:0::3"),
        Peer("02:42:00:00:00:04", None, "192.0.2.3", ip6="fd00:1::4"),  # an IPv6-only endpoint
    ]
    state = desired_state(peers, ["192.0.2.2", "192.0.2.3"])
    assert state.neigh == {
        ("10.1.0.3", "02:42:0a:01:00:03"),
        ("fd00:1::3", "02:42:0a:01:00:03"),  # canonical text, as the kernel reports it
        ("fd00:1::4", "02:42:00:00:00:04"),
    }
    # one MAC per IPv6 address too: the lowest (vtep, mac) wins in any order
    clash = [Peer("02:00:00:00:00:09", None, "192.0.2.9", ip6="fd00:1::4"), *peers]
    assert desired_state(clash, []).neigh == state.neigh
    assert desired_state(list(reversed(clash)), []).neigh == state.neigh
    moved = desired_state([Peer("02:42:00:00:00:04", None, "192.0.2.3", ip6="fd00:1::5")], [])
    changes = diff(moved, state)
    assert ("fd00:1::5", "02:42:00:00:00:04") in changes.add_neigh
    assert ("fd00:1::4", "02:42:00:00:00:04") in changes.del_neigh
