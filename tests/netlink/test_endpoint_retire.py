"""delete_endpoint's deferred deletion against a real kernel: the pair leaves service at once, the
kernel's slow deletion follows on the reaper's thread, and nothing it leaves behind outlives a restart."""

import threading
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from driver import Dataplane
from driver.names import bridge_name, is_retired_veth, retired_veth_name, vxlan_name
from driver.reaper import Reaper
from kvstore import Network, Store
from kvstore.kv_sqlite import SqliteKV
from plugin.event_loop import EventLoop

from .nsutil import TEST_VNI, link, net_ns, pyoverlay_links

pytestmark = pytest.mark.netlink

VNI = TEST_VNI
BR, VX = bridge_name(VNI), vxlan_name(VNI)
EP = "test" + "0123456789abcdef" * 3
HOST, CONTAINER = "pohtest01234567", "poctest01234567"
OTHER = "test" + "fedcba9876543210" * 3  # another endpoint given the same address, so the same MAC
OTHER_HOST = "pohtestfedcba98"
MAC = "02:42:0a:01:00:02"


@pytest.fixture
def network(dataplane: Dataplane) -> Dataplane:
    dataplane.ensure_network(VNI, 1450, "192.0.2.1")
    return dataplane


@pytest.fixture
def held(network: Dataplane) -> Iterator[threading.Event]:
    """The dataplane's reaper waits for the returned event before each deletion: what delete_endpoint
    leaves for it can be looked at (and raced) before it happens."""
    go = threading.Event()

    def delete_when_told(item: tuple[str, str]) -> None:
        go.wait(30)
        network._delete_retired(item)

    network._reaper = Reaper(delete_when_told)
    yield go
    go.set()


def retired_links(ns: str) -> list[dict]:
    with IPRoute(netns=ns, flags=0) as ipr:
        return [entry for entry in ipr.link("dump") if is_retired_veth(entry.get("ifname"))]


def test_delete_endpoint_takes_the_pair_out_of_service_before_deleting_it(
    network: Dataplane, ns: str, held: threading.Event
) -> None:
    network.ensure_endpoint(VNI, EP, MAC, 1450)
    net = net_ns(ns, VNI)
    with IPRoute(netns=net, flags=0) as ipr:
        index = link(ipr, HOST)["index"]

    network.delete_endpoint(EP, VNI)

    retired = retired_links(net)
    assert [entry.get("ifname") for entry in retired] == [retired_veth_name(index)]
    assert retired[0]["index"] == index  # the same device, renamed
    assert not retired[0].get("master") and not retired[0]["flags"] & IFF_UP
    assert HOST not in pyoverlay_links(net) and network.endpoint_ids_prefixes() == set()
    held.set()
    assert network.settle(10)
    assert pyoverlay_links(net) == {BR, VX} and pyoverlay_links(ns) == set()  # both sides gone


def test_an_endpoint_with_the_same_mac_never_meets_the_retired_port(
    network: Dataplane, ns: str, held: threading.Event
) -> None:
    network.ensure_endpoint(VNI, EP, MAC, 1450)
    network.delete_endpoint(EP)

    network.ensure_endpoint(VNI, OTHER, MAC, 1450)

    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        bridge = link(ipr, BR)["index"]
        ports = {entry.get("ifname") for entry in ipr.link("dump") if entry.get("master") == bridge}
    assert ports == {VX, OTHER_HOST}
    held.set()
    assert network.settle(10)
    assert pyoverlay_links(net_ns(ns, VNI)) == {BR, VX, OTHER_HOST}
    assert pyoverlay_links(ns) == {"poctestfedcba98"}


def test_the_same_endpoint_created_again_survives_the_deferred_deletion(
    network: Dataplane, ns: str, held: threading.Event
) -> None:
    network.ensure_endpoint(VNI, EP, MAC, 1450)
    network.delete_endpoint(EP)

    assert network.ensure_endpoint(VNI, EP, MAC, 1450) == CONTAINER  # Docker resending, say
    held.set()
    assert network.settle(10)

    assert pyoverlay_links(net_ns(ns, VNI)) == {BR, VX, HOST} and pyoverlay_links(ns) == {CONTAINER}
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr, IPRoute(netns=ns, flags=0) as host_ipr:
        host, peer = link(ipr, HOST), link(host_ipr, CONTAINER)
        assert host.get("master") == link(ipr, BR)["index"] and host["flags"] & IFF_UP
    assert host.get("link") == peer["index"] and peer.get("address") == MAC


def test_retired_veths_left_by_an_earlier_run_are_deleted_at_relist(dataplane: Dataplane, ns: str) -> None:
    store = Store(SqliteKV(None))
    net = store.create_network("host-a", "dockA", Network("net1", 0))
    dataplane.ensure_network(net.vni, 1450, "192.0.2.1")
    dataplane.ensure_endpoint(net.vni, EP, MAC, 1450)
    with IPRoute(
        netns=net_ns(ns, net.vni), flags=0
    ) as ipr:  # what an agent that died before its reaper ran leaves
        ipr.link("add", ifname=retired_veth_name(4242), kind="veth", peer="poctestaaaaaaaa")
        ipr.link("add", ifname="podelish", kind="bridge")  # not a retired name: not ours to delete
    loop = EventLoop(
        store,
        dataplane,
        "host-a",
        ensure_devices=lambda n: dataplane.ensure_network(n.vni, 1450, "192.0.2.1"),
    )
    try:
        loop.relist()
    finally:
        loop.close()

    devices = {bridge_name(net.vni), vxlan_name(net.vni), HOST, "podelish"}
    assert pyoverlay_links(net_ns(ns, net.vni)) == devices and pyoverlay_links(ns) == {CONTAINER}
    assert dataplane.delete_retired_veths() == []


def test_reaper_goes_on_after_a_failed_deletion() -> None:
    deleted: list[str] = []

    def delete(ifname: str) -> None:
        if ifname == "bad":
            raise OSError("injected")
        deleted.append(ifname)

    reaper = Reaper(delete)
    for name in ("a", "bad", "b"):
        reaper.put(name)
    assert reaper.settle(10)
    reaper.close()
    assert deleted == ["a", "b"]
