"""ensure_endpoint / delete_endpoint against a real kernel, in throwaway namespaces."""

import threading
from collections.abc import Callable

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from driver import Dataplane, DataplaneError
from driver.names import bridge_name, vxlan_name

from .nsutil import TEST_VNI, link, move_link, net_ns, pyoverlay_links, set_up_interface

pytestmark = pytest.mark.netlink

VNI = TEST_VNI
BR, VX = bridge_name(VNI), vxlan_name(VNI)
EP = "test" + "0123456789abcdef" * 3  # "test": never a Docker (hex) ID
HOST, CONTAINER = "pohtest01234567", "poctest01234567"
MAC = "02:42:0a:01:00:02"


@pytest.fixture
def network(dataplane: Dataplane) -> Dataplane:
    dataplane.ensure_network(VNI, 1450, "192.0.2.1")
    return dataplane


def test_ensure_endpoint_creates_veth_pair(network: Dataplane, ns: str) -> None:
    container_side = network.ensure_endpoint(VNI, EP, MAC, 1450)

    assert container_side == CONTAINER
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:  # the port: on the network's bridge
        host = link(ipr, HOST)
        bridge = link(ipr, BR)
    with IPRoute(netns=ns, flags=0) as ipr:  # the container side: where Docker picks it up
        peer = link(ipr, container_side)
    assert pyoverlay_links(ns) == {CONTAINER}
    assert host.get("master") == bridge["index"]
    assert host["flags"] & IFF_UP and host.get("mtu") == 1450
    assert peer.get("address") == MAC and peer.get("mtu") == 1450
    assert not peer["flags"] & IFF_UP  # Docker moves it and brings it up inside the container
    assert network.endpoint_ids_prefixes() == {"test01234567"}


def test_the_host_side_never_gets_an_ipv6_address(
    network: Dataplane, ns: str, make_netns: Callable[[], str]
) -> None:
    container = make_netns()
    network.ensure_endpoint(VNI, EP, MAC, 1450)
    move_link(ns, CONTAINER, container)
    set_up_interface(container, CONTAINER)  # carrier: the kernel would give the host side a link-local

    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        host = link(ipr, HOST)
        addresses = list(ipr.addr("dump", index=host["index"]))
    assert host.get_nested("IFLA_AF_SPEC", "AF_INET6").get("IFLA_INET6_ADDR_GEN_MODE") == 1  # none
    assert addresses == []  # the host stays off the overlay unless exposed
    network.delete_endpoint(EP)
    assert network.settle(10)


def test_ensure_endpoint_is_idempotent(network: Dataplane, ns: str) -> None:
    network.ensure_endpoint(VNI, EP, MAC, 1450)
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        first = link(ipr, HOST)["index"]

    assert network.ensure_endpoint(VNI, EP, MAC.upper(), 1450) == CONTAINER

    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        assert link(ipr, HOST)["index"] == first
    assert pyoverlay_links(net_ns(ns, VNI)) == {BR, VX, HOST}
    assert pyoverlay_links(ns) == {CONTAINER}


def test_ensure_endpoint_fixes_mtu_mac_and_bridge(network: Dataplane, ns: str) -> None:
    network.ensure_endpoint(VNI, EP, MAC, 1450)
    network.ensure_network(VNI + 1, 1400, "192.0.2.1")

    network.ensure_endpoint(VNI + 1, EP, "02:42:0a:01:00:09", 1400)

    with IPRoute(netns=net_ns(ns, VNI + 1), flags=0) as ipr:
        host = link(ipr, HOST)
        assert host.get("master") == link(ipr, bridge_name(VNI + 1))["index"]
    with IPRoute(netns=ns, flags=0) as ipr:
        peer = link(ipr, CONTAINER)
    assert HOST not in pyoverlay_links(net_ns(ns, VNI))
    assert host.get("mtu") == 1400 and peer.get("mtu") == 1400
    assert peer.get("address") == "02:42:0a:01:00:09"


def test_ensure_endpoint_succeeds_after_container_side_moved(
    network: Dataplane, ns: str, make_netns: Callable[[], str]
) -> None:
    container = make_netns()
    network.ensure_endpoint(VNI, EP, MAC, 1450)
    move_link(ns, CONTAINER, container)

    assert network.ensure_endpoint(VNI, EP, MAC, 1450) == CONTAINER

    assert CONTAINER not in pyoverlay_links(ns)  # no new pair behind Docker's back
    assert CONTAINER in pyoverlay_links(container)
    network.delete_endpoint(EP)  # removes the container side too, wherever it is
    assert network.settle(10)
    assert pyoverlay_links(container) == set()


def test_ensure_endpoint_replaces_stray_devices(network: Dataplane, ns: str) -> None:
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("add", ifname=CONTAINER, kind="veth", peer="stray0")  # name taken, not our pair

    network.ensure_endpoint(VNI, EP, MAC, 1450)

    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        host = link(ipr, HOST)
    with IPRoute(netns=ns, flags=0) as ipr:
        peer = link(ipr, CONTAINER)
        assert not ipr.link_lookup(ifname="stray0")
    assert host.get("link") == peer["index"] and peer.get("address") == MAC


def test_join_endpoint_keeps_a_pair_in_place(network: Dataplane, ns: str) -> None:
    network.ensure_endpoint(VNI, EP, MAC, 1450)
    before = _pair(ns)

    assert network.join_endpoint(VNI, EP, MAC, 1450) == CONTAINER

    assert _pair(ns) == before


def _pair(ns: str) -> tuple[int, int]:
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as net, IPRoute(netns=ns, flags=0) as host:
        return link(net, HOST)["index"], link(host, CONTAINER)["index"]


@pytest.mark.parametrize("change", ["detached", "down", "mtu", "mac", "gone"])
def test_join_endpoint_repairs_what_changed_since_create(network: Dataplane, ns: str, change: str) -> None:
    network.ensure_endpoint(VNI, EP, MAC, 1450)
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr, IPRoute(netns=ns, flags=0) as host_ipr:
        host, peer = link(ipr, HOST), link(host_ipr, CONTAINER)
        if change == "detached":
            ipr.link("set", index=host["index"], master=0)
        elif change == "down":
            ipr.link("set", index=host["index"], state="down")
        elif change == "mtu":
            ipr.link("set", index=host["index"], mtu=1300)
        elif change == "mac":
            host_ipr.link("set", index=peer["index"], address="02:42:0a:01:00:99")
        else:
            ipr.link("del", index=host["index"])

    assert network.join_endpoint(VNI, EP, MAC, 1450) == CONTAINER

    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr, IPRoute(netns=ns, flags=0) as host_ipr:
        host, peer = link(ipr, HOST), link(host_ipr, CONTAINER)
        assert host.get("master") == link(ipr, BR)["index"] and host["flags"] & IFF_UP
        assert host.get("mtu") == 1450 and peer.get("mtu") == 1450 and peer.get("address") == MAC


def test_join_endpoint_after_container_side_moved(
    network: Dataplane, ns: str, make_netns: Callable[[], str]
) -> None:
    network.ensure_endpoint(VNI, EP, MAC, 1450)
    move_link(ns, CONTAINER, make_netns())

    assert network.join_endpoint(VNI, EP, MAC, 1450) == CONTAINER
    assert CONTAINER not in pyoverlay_links(ns)


def test_delete_endpoint_is_idempotent(network: Dataplane, ns: str) -> None:
    network.ensure_endpoint(VNI, EP, MAC, 1450)

    network.delete_endpoint(EP)
    network.delete_endpoint(EP, VNI)

    assert HOST not in pyoverlay_links(
        net_ns(ns, VNI)
    )  # at once; the pair itself goes on the reaper's thread
    assert network.settle(10)
    assert pyoverlay_links(ns) == set()
    assert pyoverlay_links(net_ns(ns, VNI)) == {BR, VX}
    assert network.endpoint_ids_prefixes() == set()


def test_ensure_endpoint_without_network_names_the_bridge(dataplane: Dataplane) -> None:
    with pytest.raises(DataplaneError, match=BR):
        dataplane.ensure_endpoint(VNI, EP, MAC, 1450)


def test_endpoint_id_must_be_long_enough(network: Dataplane) -> None:
    with pytest.raises(ValueError):
        network.ensure_endpoint(VNI, "abc", MAC, 1450)


def test_endpoints_from_many_threads_at_once(network: Dataplane, ns: str) -> None:
    ids = [f"test{i:08x}" + "f" * 52 for i in range(12)]
    errors: list[BaseException] = []

    def worker(endpoint_id: str, index: int) -> None:
        try:
            network.ensure_endpoint(VNI, endpoint_id, f"02:42:0a:01:01:{index:02x}", 1450)
            network.ensure_endpoint(VNI, endpoint_id, f"02:42:0a:01:01:{index:02x}", 1450)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(ep, i)) for i, ep in enumerate(ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert network.endpoint_ids_prefixes() == {ep[:12] for ep in ids}
