"""This host's own address on a network's bridge (pyoverlay expose) in a real kernel: only the labelled
address survives ensure_network, the bridge's MAC follows the exposure, multicast snooping stays off,
and packets flow between the exposed host and containers on both hosts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pyroute2 import IPRoute

from driver import Dataplane, Peer, desired_state, diff
from driver.links import host_label
from driver.names import bridge_name, vxlan_name

from .nsutil import TEST_VNI, move_link, ping, set_up_interface
from .test_traffic import VNI, Host, hosts  # noqa: F401 - the two-host fixture

pytestmark = pytest.mark.netlink

EXPOSED, MAC = "10.50.0.100/24", "02:42:0a:32:00:64"


def bridge_state(ns: str, vni: int) -> tuple[set[tuple[str, int, str]], str, int]:
    """(addresses as (ip, prefixlen, label), MAC, multicast snooping) of the network's bridge."""
    with IPRoute(netns=ns, flags=0) as ipr:
        bridge = ipr.link("get", ifname=bridge_name(vni))[0]
        addresses = {
            (a.get("IFA_ADDRESS"), a["prefixlen"], a.get("IFA_LABEL"))
            for a in ipr.addr("dump", index=bridge["index"])
        }
        snooping = bridge.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_BR_MCAST_SNOOPING")
        return addresses, bridge.get("address"), snooping


def vxlan_mac(ns: str, vni: int) -> str:
    with IPRoute(netns=ns, flags=0) as ipr:
        return ipr.link("get", ifname=vxlan_name(vni))[0].get("address")


def test_only_the_labelled_address_survives_and_the_mac_follows(dataplane: Dataplane, ns: str) -> None:
    dataplane.ensure_network(TEST_VNI, 1450, "192.0.2.1")
    assert bridge_state(ns, TEST_VNI)[2] == 0  # multicast snooping off from creation
    dataplane.ensure_host_address(TEST_VNI, "10.1.0.254/24", "02:42:0a:01:00:fe")
    label = host_label(bridge_name(TEST_VNI))
    with IPRoute(netns=ns, flags=0) as ipr:
        index = ipr.link_lookup(ifname=bridge_name(TEST_VNI))[0]
        ipr.addr("add", index=index, address="10.99.0.1", prefixlen=24)  # by hand: a stray
        ipr.link("set", index=index, kind="bridge", br_mcast_snooping=1)  # by hand: drift
    dataplane.ensure_network(TEST_VNI, 1450, "192.0.2.1")
    assert bridge_state(ns, TEST_VNI) == ({("10.1.0.254", 24, label)}, "02:42:0a:01:00:fe", 0)
    dataplane.ensure_host_address(TEST_VNI, None)
    addresses, mac, _ = bridge_state(ns, TEST_VNI)
    assert addresses == set() and mac == vxlan_mac(ns, TEST_VNI)  # the exposed MAC is not kept
    dataplane.delete_network(TEST_VNI)


def test_the_exposed_host_and_containers_on_both_hosts_reach_each_other(
    hosts: tuple[Host, Host],  # noqa: F811
    make_netns: Callable[[], str],
) -> None:
    a, b = hosts
    a.dataplane.ensure_host_address(VNI, EXPOSED, MAC)
    # host A's own container too: it reaches the exposed address across A's bridge only
    local = make_netns()
    side = a.dataplane.ensure_endpoint(VNI, "testlocal" + "0" * 20, "02:42:0a:32:00:09", 1450)
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
