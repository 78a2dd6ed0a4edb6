"""One contract for the real Dataplane (in a throwaway namespace) and tests/memory_dataplane.py's
MemoryDataplane, which the service tier and the scale benchmark use in its place: what each method
leaves observable through the others must be the same."""

import subprocess
from collections.abc import Iterator

import pytest

from driver import Dataplane, DataplaneError, Peer, PeerState, desired_state, diff
from tests.memory_dataplane import MemoryDataplane

from .nsutil import TEST_VNI

pytestmark = pytest.mark.netlink

ENDPOINT = "contract" + "cd" * 28
PEERS = [Peer("02:42:0a:01:00:03", "10.1.0.3", "192.0.2.2"), Peer("02:42:0a:01:00:04", None, "192.0.2.3")]


@pytest.fixture(params=["kernel", "memory"])
def plane(request: pytest.FixtureRequest) -> Iterator[Dataplane | MemoryDataplane]:
    if request.param == "memory":
        yield MemoryDataplane()
        return
    ns = request.getfixturevalue("ns")
    with Dataplane(netns=ns) as dp:
        yield dp


def test_network_lifecycle_is_idempotent(plane) -> None:
    assert plane.network_vnis() == set()
    plane.ensure_network(TEST_VNI, 1450, "192.0.2.1")
    plane.ensure_network(TEST_VNI, 1450, "192.0.2.1")
    assert plane.network_vnis() == {TEST_VNI}
    assert plane.has_network(TEST_VNI) and not plane.has_network(TEST_VNI + 1)
    plane.delete_network(TEST_VNI)
    plane.delete_network(TEST_VNI)
    assert plane.network_vnis() == set()
    assert not plane.has_network(TEST_VNI)
    with pytest.raises(ValueError):
        plane.ensure_network(0, 1450, "192.0.2.1")


def plug(plane, endpoint_id: str, request: pytest.FixtureRequest) -> None:
    """What Docker does at Join: move the container side of the endpoint's veth into a container."""
    if isinstance(plane, MemoryDataplane):
        plane.plug(endpoint_id)
        return
    container = request.getfixturevalue("make_netns")()  # another throwaway namespace: the container's
    subprocess.run(
        [
            "ip",
            "-n",
            request.getfixturevalue("ns"),
            "link",
            "set",
            "poc" + endpoint_id[:12],
            "netns",
            container,
        ],
        check=True,
    )


def test_loose_endpoints_are_those_in_no_container(plane, request: pytest.FixtureRequest) -> None:
    other = "contract" + "ef" * 28
    plane.ensure_network(TEST_VNI, 1450, "192.0.2.1")
    for endpoint_id, mac in ((ENDPOINT, "02:42:0a:01:00:02"), (other, "02:42:0a:01:00:05")):
        plane.ensure_endpoint(TEST_VNI, endpoint_id, mac, 1450)
    assert plane.loose_endpoint_ids_prefixes() == {ENDPOINT[:12], other[:12]}  # made, not joined yet
    plug(plane, ENDPOINT, request)
    assert plane.loose_endpoint_ids_prefixes() == {other[:12]}
    assert plane.endpoint_ids_prefixes() == {ENDPOINT[:12], other[:12]}  # both ports are on the bridge
    plane.delete_endpoint(other)
    plane.settle()  # the pair's deletion is deferred to the reaper
    assert plane.loose_endpoint_ids_prefixes() == set()


def test_endpoints_need_their_network_and_go_with_it(plane) -> None:
    with pytest.raises(DataplaneError):
        plane.ensure_endpoint(TEST_VNI, ENDPOINT, "02:42:0a:01:00:02", 1450)
    plane.ensure_network(TEST_VNI, 1450, "192.0.2.1")
    first = plane.ensure_endpoint(TEST_VNI, ENDPOINT, "02:42:0a:01:00:02", 1450)
    assert plane.ensure_endpoint(TEST_VNI, ENDPOINT, "02:42:0a:01:00:02", 1450) == first
    assert plane.join_endpoint(TEST_VNI, ENDPOINT, "02:42:0a:01:00:02", 1450) == first
    assert plane.endpoint_ids_prefixes() == {ENDPOINT[:12]}
    plane.delete_endpoint(ENDPOINT)
    plane.delete_endpoint(ENDPOINT)
    assert plane.endpoint_ids_prefixes() == set()
    plane.ensure_endpoint(TEST_VNI, ENDPOINT, "02:42:0a:01:00:02", 1450)
    plane.delete_network(TEST_VNI)
    assert plane.endpoint_ids_prefixes() == set()  # a veth goes with its network's namespace
    plane.delete_endpoint(ENDPOINT)
    with pytest.raises(ValueError):  # no veth can be named after it (a host exposure's id, say)
        plane.delete_endpoint("host-0123456789abcdef-" + "ab" * 32)


def test_peers_round_trip_and_need_the_device(plane) -> None:
    desired = desired_state(PEERS, {p.vtep for p in PEERS})
    with pytest.raises(DataplaneError):
        plane.read_peers(TEST_VNI)
    assert plane.apply_peers(TEST_VNI, diff(desired, PeerState())) != []  # no device: reported, not raised
    plane.ensure_network(TEST_VNI, 1450, "192.0.2.1")
    assert plane.read_peers(TEST_VNI) == PeerState()
    assert plane.apply_peers(TEST_VNI, diff(desired, plane.read_peers(TEST_VNI))) == []
    assert plane.read_peers(TEST_VNI) == desired
    fewer = desired_state(PEERS[:1], {PEERS[0].vtep})
    assert plane.apply_peers(TEST_VNI, diff(fewer, plane.read_peers(TEST_VNI))) == []
    assert plane.read_peers(TEST_VNI) == fewer
    plane.delete_network(TEST_VNI)


def test_host_address_is_exact_idempotent_outlives_ensure_network_and_goes_with_the_network(plane) -> None:
    exposed, mac = "10.1.0.254/24", "02:42:0a:01:00:fe"
    with pytest.raises(DataplaneError):
        plane.ensure_host_address(TEST_VNI, exposed, mac)
    plane.ensure_network(TEST_VNI, 1450, "192.0.2.1")
    assert plane.host_address(TEST_VNI) is None
    plane.ensure_host_address(TEST_VNI, exposed, mac)
    plane.ensure_host_address(TEST_VNI, exposed, mac)
    assert plane.host_address(TEST_VNI) == (exposed, mac)
    plane.ensure_network(TEST_VNI, 1450, "192.0.2.1")  # what handlers and resyncs call: keeps it
    assert plane.host_address(TEST_VNI) == (exposed, mac)
    plane.ensure_host_address(TEST_VNI, "10.1.0.253/24", "02:42:0a:01:00:fd")  # replaced, not added
    assert plane.host_address(TEST_VNI) == ("10.1.0.253/24", "02:42:0a:01:00:fd")
    plane.ensure_host_address(TEST_VNI, None)
    plane.ensure_host_address(TEST_VNI, None)
    assert plane.host_address(TEST_VNI) is None
    plane.ensure_host_address(TEST_VNI, exposed, mac)
    plane.delete_network(TEST_VNI)
    assert plane.host_address(TEST_VNI) is None
    plane.ensure_network(TEST_VNI, 1450, "192.0.2.1")
    assert plane.host_address(TEST_VNI) is None


def test_announce_needs_the_network_and_a_well_formed_address(plane) -> None:
    with pytest.raises(DataplaneError):
        plane.announce(TEST_VNI, "10.1.0.3", "02:42:0a:01:00:03")
    plane.ensure_network(TEST_VNI, 1450, "192.0.2.1")
    plane.announce(TEST_VNI, "10.1.0.3", "02:42:0a:01:00:03")
    plane.announce(TEST_VNI, "fd00::3", "02:42:00:00:00:03")  # a neighbour advertisement
    for ip, mac in [
        ("10.1.0.300", "02:42:0a:01:00:03"),
        ("10.1.0.3", "02:42:0a"),
        ("fd00::3", "02:42:0a"),
        ("fd00::g", "02:42:0a:01:00:03"),
    ]:
        with pytest.raises(DataplaneError):
            plane.announce(TEST_VNI, ip, mac)
    plane.delete_network(TEST_VNI)
