"""This host's own address on a network (pyoverlay expose) in a real kernel: a veth from the host's
namespace to the network's bridge holds exactly the exposed address and MAC, goes when hidden, and packets
flow between the exposed host and containers on both hosts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pyroute2 import IPRoute

from driver import Dataplane, Peer, desired_state, diff
from driver.links import host_label
from driver.names import bridge_name, exposure_names

from .nsutil import TEST_VNI, move_link, net_ns, ping, pyoverlay_links, set_up_interface
from .test_traffic import VNI, Host, hosts  # noqa: F401 - the two-host fixture

pytestmark = pytest.mark.netlink

EXPOSED, MAC = "10.50.0.100/24", "02:42:0a:32:00:64"
HOST_SIDE, PORT = exposure_names(TEST_VNI)


def host_side_state(ns: str) -> tuple[set[tuple[str, int, str]], str]:
    """(addresses as (ip, prefixlen, label), MAC) of the host's side of the exposure."""
    with IPRoute(netns=ns, flags=0) as ipr:
        link = ipr.link("get", ifname=HOST_SIDE)[0]
        addresses = {
            (a.get("IFA_ADDRESS"), a["prefixlen"], a.get("IFA_LABEL"))
            for a in ipr.addr("dump", index=link["index"])
        }
        return addresses, link.get("address")


def test_the_exposure_holds_exactly_its_address_and_goes_when_hidden(dataplane: Dataplane, ns: str) -> None:
    dataplane.ensure_network(TEST_VNI, 1450, "192.0.2.1")
    with IPRoute(netns=net_ns(ns, TEST_VNI), flags=0) as ipr:
        bridge = ipr.link("get", ifname=bridge_name(TEST_VNI))[0]
    assert bridge.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_BR_MCAST_SNOOPING") == 0
    dataplane.ensure_host_address(TEST_VNI, "10.1.0.254/24", "02:42:0a:01:00:fe")
    label = host_label(HOST_SIDE)
    with IPRoute(netns=ns, flags=0) as ipr:
        index = ipr.link_lookup(ifname=HOST_SIDE)[0]
        ipr.addr("add", index=index, address="10.99.0.1", prefixlen=24)  # by hand: a stray
    dataplane.ensure_host_address(TEST_VNI, "10.1.0.254/24", "02:42:0a:01:00:fe")
    assert host_side_state(ns) == ({("10.1.0.254", 24, label)}, "02:42:0a:01:00:fe")
    assert dataplane.host_address(TEST_VNI) == ("10.1.0.254/24", "02:42:0a:01:00:fe")
    with IPRoute(netns=net_ns(ns, TEST_VNI), flags=0) as ipr:
        assert ipr.link("get", ifname=PORT)[0].get("master") == bridge["index"]
    dataplane.ensure_host_address(TEST_VNI, None)
    assert HOST_SIDE not in pyoverlay_links(ns) and PORT not in pyoverlay_links(net_ns(ns, TEST_VNI))
    assert dataplane.host_address(TEST_VNI) is None
    dataplane.ensure_host_address(TEST_VNI, "10.1.0.254/24", "02:42:0a:01:00:fe")
    dataplane.delete_network(TEST_VNI)  # the exposure goes with its network
    assert pyoverlay_links(ns) == set()


def test_the_exposed_host_and_containers_on_both_hosts_reach_each_other(
    hosts: tuple[Host, Host],  # noqa: F811
    make_netns: Callable[[], str],
) -> None:
    a, b = hosts
    a.dataplane.ensure_host_address(VNI, EXPOSED, MAC)
    # host A's own container too: it reaches the exposed address across A's bridge only
    local = make_netns()
    side = a.dataplane.ensure_endpoint(VNI, "testlocal" + "0" * 20, "02:42:0a:32:00:09", 1450, ("10.50.0.9",))
    move_link(a.netns, side, local)
    set_up_interface(local, side, "10.50.0.9")
    exposed_ip = EXPOSED.split("/")[0]
    # what the event loops program: B knows A's container and A's exposure, A knows B's container
    b_peers = [Peer(a.mac, a.container_ip, a.vtep), Peer(MAC, exposed_ip, a.vtep)]
    assert (
        b.dataplane.apply_peers(VNI, diff(desired_state(b_peers, [a.vtep]), b.dataplane.read_peers(VNI)))
        == []
    )
    a_peers = [Peer(b.mac, b.container_ip, b.vtep)]
    assert (
        a.dataplane.apply_peers(VNI, diff(desired_state(a_peers, [b.vtep]), a.dataplane.read_peers(VNI)))
        == []
    )
    assert ping(a.netns, b.container_ip, timeout=10), "exposed host -> remote container"
    assert ping(b.container, exposed_ip, timeout=10), "remote container -> exposed host"
    assert ping(local, exposed_ip, timeout=10), "local container -> exposed host"
    assert ping(a.netns, "10.50.0.9", timeout=10), "exposed host -> local container"
    a.dataplane.ensure_host_address(VNI, None)
    assert not ping(b.container, exposed_ip, timeout=1.5), "hidden: the host must not answer"
    assert not ping(a.netns, b.container_ip, timeout=1.5), "hidden: no route from the host"
