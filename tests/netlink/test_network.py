"""ensure_network / delete_network against a real kernel: the "host" is a throwaway namespace, and each
network gets a namespace of its own beside it (<host>-<vni>)."""

import threading

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from driver import Dataplane, DataplaneError
from driver.firewall import forward_rule
from driver.names import bridge_name, vxlan_name

from .nsutil import (
    TEST_VNI,
    in_netns,
    link,
    net_ns,
    pyoverlay_links,
    pyoverlay_rules,
    read_sysctl,
    vxlan_attr,
)

pytestmark = pytest.mark.netlink

VNI = TEST_VNI
BR, VX = bridge_name(VNI), vxlan_name(VNI)
LOCAL = "192.0.2.1"
NF_CALL = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables")


def test_ensure_network_builds_bridge_and_vxlan_in_the_networks_namespace(
    dataplane: Dataplane, ns: str
) -> None:
    dataplane.ensure_network(VNI, 1450, LOCAL)

    net = net_ns(ns, VNI)
    assert dataplane.network_netns(VNI) == f"/run/netns/{net}"
    with IPRoute(netns=net, flags=0) as ipr:
        bridge = link(ipr, BR)
        vxlan = link(ipr, VX)
        bridge_addresses = ipr.addr("dump", index=bridge["index"])
    assert bridge.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge"
    assert bridge.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_BR_STP_STATE") == 0
    assert bridge.get("mtu") == 1450 and bridge["flags"] & IFF_UP
    assert not bridge_addresses
    assert vxlan.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "vxlan"
    assert vxlan_attr(vxlan, "id") == VNI
    assert vxlan_attr(vxlan, "local") == LOCAL
    assert vxlan_attr(vxlan, "port") == 4789
    assert vxlan_attr(vxlan, "learning") == 0
    assert vxlan_attr(vxlan, "proxy") == 1
    assert vxlan.get("mtu") == 1450 and vxlan["flags"] & IFF_UP
    assert vxlan.get("master") == bridge["index"]
    assert vxlan.get("IFLA_LINK_NETNSID") is not None  # its UDP socket lives in the host's namespace
    assert pyoverlay_links(ns) == set() and pyoverlay_rules(ns) == []  # nothing in the host's
    assert dataplane.network_vnis() == {VNI}
    for name in NF_CALL:  # bridged frames never meet iptables (absent: br_netfilter not loaded)
        assert read_sysctl(net, f"net.bridge.{name}") in (None, "0")


def test_ensure_network_is_idempotent_and_adopts_existing_devices(dataplane: Dataplane, ns: str) -> None:
    dataplane.ensure_network(VNI, 1450, LOCAL, port=4790)
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        first = (link(ipr, BR)["index"], link(ipr, VX)["index"])

    dataplane.ensure_network(VNI, 1450, LOCAL, port=4790)
    with Dataplane(netns=ns) as restarted_agent:
        restarted_agent.ensure_network(VNI, 1450, LOCAL, port=4790)

    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        assert (link(ipr, BR)["index"], link(ipr, VX)["index"]) == first


def test_ensure_network_recreates_vxlan_with_wrong_vni(dataplane: Dataplane, ns: str) -> None:
    dataplane.ensure_network(VNI, 1450, LOCAL)
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        ipr.link("del", ifname=VX)
        ipr.link("add", ifname=VX, kind="vxlan", vxlan_id=999, vxlan_local=LOCAL, vxlan_port=4789)

    dataplane.ensure_network(VNI, 1450, LOCAL)

    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        vxlan = link(ipr, VX)
    assert vxlan_attr(vxlan, "id") == VNI
    assert vxlan_attr(vxlan, "learning") == 0


@pytest.mark.parametrize(("attr", "value"), [("vxlan_local", "192.0.2.99"), ("vxlan_port", 8472)])
def test_ensure_network_recreates_vxlan_with_wrong_local_or_port(
    dataplane: Dataplane, ns: str, attr: str, value: object
) -> None:
    dataplane.ensure_network(VNI, 1450, LOCAL)
    settings = {"vxlan_id": VNI, "vxlan_local": LOCAL, "vxlan_port": 4789, "vxlan_learning": 1} | {
        attr: value
    }
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        ipr.link("del", ifname=VX)
        ipr.link("add", ifname=VX, kind="vxlan", **settings)

    dataplane.ensure_network(VNI, 1450, LOCAL)

    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        vxlan = link(ipr, VX)
    assert (vxlan_attr(vxlan, "local"), vxlan_attr(vxlan, "port")) == (LOCAL, 4789)
    assert vxlan_attr(vxlan, "learning") == 0


def test_ensure_network_fixes_wrong_kind_stp_mtu_address_and_down_bridge(
    dataplane: Dataplane, ns: str
) -> None:
    dataplane.ensure_network(VNI, 1450, LOCAL)
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        ipr.link("del", ifname=VX)
        ipr.link("del", ifname=BR)
        ipr.link("add", ifname=VX, kind="veth", peer="stray0")  # wrong kind
        ipr.link("add", ifname=BR, kind="bridge", br_stp_state=1, mtu=1500)
        index = ipr.link_lookup(ifname=BR)[0]
        ipr.addr("add", index=index, address="10.99.0.1", prefixlen=24)

    dataplane.ensure_network(VNI, 1400, LOCAL)

    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        bridge = link(ipr, BR)
        vxlan = link(ipr, VX)
        addresses = ipr.addr("dump", index=index)
    assert bridge["index"] == index  # adopted, not recreated
    assert bridge.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_BR_STP_STATE") == 0
    assert bridge.get("mtu") == 1400 and bridge["flags"] & IFF_UP
    assert not addresses
    assert vxlan.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "vxlan"


def test_ensure_network_reattaches_a_detached_vxlan(dataplane: Dataplane, ns: str) -> None:
    dataplane.ensure_network(VNI, 1450, LOCAL)
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        index = link(ipr, VX)["index"]
        ipr.link("set", index=index, master=0)
        ipr.link("set", index=index, state="down")

    dataplane.ensure_network(VNI, 1450, LOCAL)

    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        vxlan = link(ipr, VX)
        assert vxlan.get("master") == link(ipr, BR)["index"]
    assert vxlan["flags"] & IFF_UP


def test_ensure_network_names_the_device_when_the_vni_is_taken(dataplane: Dataplane, ns: str) -> None:
    # the VNI is claimed per UDP socket, and the socket is the host's
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("add", ifname="foreign0", kind="vxlan", vxlan_id=VNI, vxlan_local=LOCAL, vxlan_port=4789)
        ipr.link("set", index=ipr.link_lookup(ifname="foreign0")[0], state="up")

    with pytest.raises(DataplaneError, match=VX):
        dataplane.ensure_network(VNI, 1450, LOCAL)


def test_a_network_built_in_the_hosts_namespace_moves_into_its_own(dataplane: Dataplane, ns: str) -> None:
    # how pyoverlay built networks before each had a namespace: bridge, VXLAN device, an endpoint's port
    # and the FORWARD rule that let bridged frames pass dockerd's DROP policy, all in the host's namespace
    port, peer = "pohtest0000aaaa", "poctest0000aaaa"
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("add", ifname=BR, kind="bridge")
        ipr.link("add", ifname=VX, kind="vxlan", vxlan_id=VNI, vxlan_local=LOCAL, vxlan_port=4789)
        ipr.link("add", ifname=port, kind="veth", peer=peer)
        bridge = ipr.link_lookup(ifname=BR)[0]
        for name in (VX, port):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], master=bridge, state="up")
    in_netns(ns, "iptables", "-w", "-I", "FORWARD", *forward_rule(VNI))
    assert dataplane.network_vnis() == {VNI}

    dataplane.ensure_network(VNI, 1450, LOCAL)

    assert pyoverlay_links(ns) == {peer} and pyoverlay_rules(ns) == []
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        moved = link(ipr, port)
        assert moved.get("master") == link(ipr, BR)["index"] and moved["flags"] & IFF_UP
        assert link(ipr, VX).get("master") == link(ipr, BR)["index"]
    dataplane.delete_endpoint("test0000aaaa" + "0" * 20)
    assert dataplane.settle(10)
    assert pyoverlay_links(ns) == set()


def test_delete_network_leaves_no_namespace_and_no_device(dataplane: Dataplane, ns: str) -> None:
    dataplane.ensure_network(VNI, 1450, LOCAL)
    dataplane.ensure_network(VNI + 1, 1450, LOCAL)

    dataplane.delete_network(VNI)
    dataplane.delete_network(VNI)  # idempotent

    assert dataplane.network_vnis() == {VNI + 1}
    assert read_sysctl(net_ns(ns, VNI + 1), "net.ipv4.ip_forward") is not None
    assert in_netns(None, "test", "-e", f"/run/netns/{net_ns(ns, VNI)}", check=False).returncode == 1
    dataplane.delete_network(VNI + 1)
    assert dataplane.network_vnis() == set()
    # the VNI is free again on the host's port: the devices went with the namespace
    dataplane.ensure_network(VNI, 1450, LOCAL)
    dataplane.delete_network(VNI)


def test_network_vnis_sees_half_built_networks(dataplane: Dataplane, ns: str) -> None:
    dataplane.ensure_network(VNI + 76, 1450, LOCAL)
    with IPRoute(netns=net_ns(ns, VNI + 76), flags=0) as ipr:
        ipr.link("del", ifname=vxlan_name(VNI + 76))
        ipr.link("del", ifname=bridge_name(VNI + 76))
    with IPRoute(netns=ns, flags=0) as ipr:  # before namespaces
        ipr.link("add", ifname=bridge_name(VNI + 77), kind="bridge")
        ipr.link("add", ifname=vxlan_name(VNI + 78), kind="vxlan", vxlan_id=VNI + 78)
        ipr.link("add", ifname="pobr0x", kind="bridge")  # not ours: no VNI in the name
    assert dataplane.network_vnis() == {VNI + 76, VNI + 77, VNI + 78}
    assert not dataplane.has_network(VNI + 76)
    for vni in (VNI + 76, VNI + 77, VNI + 78):
        dataplane.delete_network(vni)
    assert pyoverlay_links(ns) == {"pobr0x"} and dataplane.network_vnis() == set()


def test_ensure_network_from_many_threads_at_once(dataplane: Dataplane, ns: str) -> None:
    errors: list[BaseException] = []

    def worker(vni: int) -> None:
        try:
            dataplane.ensure_network(vni, 1450, LOCAL)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(VNI + 100 + i % 3,)) for i in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert dataplane.network_vnis() == {VNI + 100, VNI + 101, VNI + 102}
    assert all(dataplane.has_network(VNI + 100 + i) for i in range(3))


def test_invalid_vni_is_rejected(dataplane: Dataplane) -> None:
    with pytest.raises(ValueError):
        dataplane.ensure_network(0, 1450, LOCAL)
    with pytest.raises(ValueError):
        dataplane.delete_network(1 << 24)


def test_dataplane_in_a_missing_namespace_fails_clearly() -> None:
    with Dataplane(netns="pyo-nl-does-not-exist") as dp, pytest.raises(DataplaneError, match="netns"):
        dp.network_vnis()


def test_local_address_must_be_an_address(dataplane: Dataplane, ns: str) -> None:
    with pytest.raises(
        DataplaneError,
        match=f"{VX}: create vxlan: local 'vtep': .*does not appear to be an IPv4 or IPv6 address",
    ):
        dataplane.ensure_network(VNI, 1450, "vtep")
    assert dataplane.network_vnis() == set()


def test_an_ipv6_local_address_and_back(dataplane: Dataplane, ns: str) -> None:
    """An encrypted network's VXLAN device sends from the host's IPv6 tunnel address: made so, kept by a
    second ensure, and made anew when the network's local address changes family."""
    dataplane.ensure_network(VNI, 1370, "fd70:796f:7601::1")
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        first = link(ipr, VX)
    assert vxlan_attr(first, "local6") == "fd70:796f:7601::1" and vxlan_attr(first, "local") is None
    dataplane.ensure_network(VNI, 1370, "fd70:796f:7601::1")
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        assert link(ipr, VX)["index"] == first["index"]
    dataplane.ensure_network(VNI, 1450, LOCAL)
    with IPRoute(netns=net_ns(ns, VNI), flags=0) as ipr:
        vxlan = link(ipr, VX)
    assert (vxlan_attr(vxlan, "local"), vxlan_attr(vxlan, "local6")) == (LOCAL, None)
