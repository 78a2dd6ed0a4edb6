"""read_peers / apply_peers: FDB and neighbour entries on a real VXLAN device."""

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ndmsg import NTF_SELF, NUD_PERMANENT

from driver import Dataplane, Peer, PeerChanges, PeerState, desired_state, diff
from driver.names import vxlan_name
from driver.peers import FLOOD_MAC

from .nsutil import TEST_VNI, net_ns

pytestmark = pytest.mark.netlink

VNI = TEST_VNI
VX = vxlan_name(VNI)
PEERS = [
    Peer(mac="02:42:0a:01:00:03", ip="10.1.0.3", vtep="192.0.2.2"),
    Peer(mac="02:42:0a:01:00:04", ip="10.1.0.4", vtep="192.0.2.3"),
    Peer(mac="02:42:0a:01:00:05", ip=None, vtep="192.0.2.3"),
]
VTEPS = ["192.0.2.2", "192.0.2.3"]


@pytest.fixture
def network(dataplane: Dataplane) -> Dataplane:
    dataplane.ensure_network(VNI, 1450, "192.0.2.1")
    return dataplane


def converge(dataplane: Dataplane, desired: PeerState) -> list[str]:
    return dataplane.apply_peers(VNI, diff(desired, dataplane.read_peers(VNI)))


def test_fresh_device_reads_empty_despite_bridge_local_entries(network: Dataplane, ns: str) -> None:
    network.ensure_endpoint(VNI, "test" + "ab" * 30, "02:42:0a:01:00:02", 1450)
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        index = ipr.link_lookup(ifname=VX)[0]
        # the kernel does report bridge-local entries (own MAC, no NTF_SELF / no dst) on the device
        assert any(not e["flags"] & NTF_SELF or not e.get("NDA_DST") for e in ipr.fdb("dump", ifindex=index))

    assert network.read_peers(VNI) == PeerState()


def test_apply_then_read_round_trip_including_flood_entries(network: Dataplane, ns: str) -> None:
    desired = desired_state(PEERS, VTEPS)

    assert converge(network, desired) == []

    actual = network.read_peers(VNI)
    assert actual == desired
    assert {(FLOOD_MAC, "192.0.2.2"), (FLOOD_MAC, "192.0.2.3")} <= actual.fdb
    assert diff(desired, actual) == PeerChanges()
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        index = ipr.link_lookup(ifname=VX)[0]
        remote = [e for e in ipr.fdb("dump", ifindex=index) if e.get("NDA_DST")]
        neighbours = list(ipr.neigh("dump", ifindex=index))
    assert len(remote) == 5
    assert all(e["flags"] & NTF_SELF and e["state"] & NUD_PERMANENT for e in remote)
    assert {e.get("NDA_DST") for e in neighbours} == {"10.1.0.3", "10.1.0.4"}
    assert all(e["state"] & NUD_PERMANENT for e in neighbours)


def test_applying_twice_changes_nothing(network: Dataplane) -> None:
    desired = desired_state(PEERS, VTEPS)
    converge(network, desired)
    everything_again = PeerChanges(add_fdb=desired.fdb, add_neigh=desired.neigh)

    assert network.apply_peers(VNI, everything_again) == []
    assert network.read_peers(VNI) == desired


def test_removal_of_peers_and_flood_entries(network: Dataplane) -> None:
    converge(network, desired_state(PEERS, VTEPS))
    remaining = desired_state(PEERS[:1], VTEPS[:1])

    assert converge(network, remaining) == []
    assert network.read_peers(VNI) == remaining

    assert converge(network, PeerState()) == []
    assert network.read_peers(VNI) == PeerState()


def test_a_peer_that_moved_host_is_updated(network: Dataplane) -> None:
    converge(network, desired_state(PEERS, VTEPS))
    moved = [Peer(mac="02:42:0a:01:00:03", ip="10.1.0.3", vtep="192.0.2.3"), *PEERS[1:]]

    assert converge(network, desired_state(moved, ["192.0.2.3"])) == []
    assert network.read_peers(VNI) == desired_state(moved, ["192.0.2.3"])


def test_an_address_that_moved_to_a_new_mac_is_updated(network: Dataplane) -> None:
    converge(network, desired_state(PEERS, VTEPS))
    readdressed = [Peer(mac="02:42:0a:01:00:09", ip="10.1.0.3", vtep="192.0.2.2"), *PEERS[1:]]

    assert converge(network, desired_state(readdressed, VTEPS)) == []
    assert network.read_peers(VNI) == desired_state(readdressed, VTEPS)


def test_one_bad_entry_does_not_stop_the_rest(network: Dataplane) -> None:
    good = desired_state(PEERS, VTEPS)
    changes = PeerChanges(
        add_fdb=good.fdb | {("not-a-mac", "192.0.2.9"), ("02:42:0a:01:00:77", "not-an-ip")},
        add_neigh=good.neigh | {("10.1.0.77", "zz:zz")},
        del_fdb=frozenset({("02:42:0a:01:00:99", "192.0.2.9")}),  # absent: deleting is not an error
        del_neigh=frozenset({("10.1.0.99", "02:42:0a:01:00:99")}),
    )

    errors = network.apply_peers(VNI, changes)

    assert len(errors) == 3, errors
    assert all(error.startswith(f"{VX}: add ") for error in errors)
    assert network.read_peers(VNI) == good


def test_apply_to_a_missing_device_reports_instead_of_raising(dataplane: Dataplane) -> None:
    changes = diff(desired_state(PEERS, VTEPS), PeerState())
    errors = dataplane.apply_peers(VNI, changes)
    assert errors == [f"{VX}: apply peers: device not found"]
    assert dataplane.apply_peers(VNI, PeerChanges()) == []
