"""Real packets: two "hosts" (namespaces) joined by a veth underlay, one "container" on each.

ctr_a ── veth ── hostA's network ns: pobr/povx ══ VXLAN over 192.0.2.0/24 ══ hostB: povx/pobr ── veth ── ctr_b
"""

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from driver import Dataplane, Peer, PeerState, desired_state, diff

from .nsutil import (
    TEST_VNI,
    in_netns,
    move_link,
    ping,
    pyoverlay_rules,
    read_sysctl,
    require,
    set_up_interface,
    write_sysctl,
)

pytestmark = pytest.mark.netlink

VNI = TEST_VNI + 5000
MTU = 1450
NF_CALL_IPTABLES = "net.bridge.bridge-nf-call-iptables"


@dataclass
class Host:
    netns: str
    dataplane: Dataplane
    vtep: str
    container: str
    container_ip: str
    mac: str


@pytest.fixture
def hosts(make_netns: Callable[[], str]) -> Iterator[tuple[Host, Host]]:
    host_a, host_b = make_netns(), make_netns()
    with IPRoute(netns=host_a, flags=0) as ipr:
        ipr.link("add", ifname="under0", kind="veth", peer="under1")
    move_link(host_a, "under1", host_b)
    set_up_interface(host_a, "under0", "192.0.2.1")
    set_up_interface(host_b, "under1", "192.0.2.2")

    built = []
    for index, host_ns in enumerate((host_a, host_b), start=1):
        dataplane = Dataplane(netns=host_ns)
        built.append(
            Host(
                host_ns,
                dataplane,
                f"192.0.2.{index}",
                make_netns(),
                f"10.50.0.{index}",
                f"02:42:0a:32:00:0{index}",
            )
        )
    try:
        for host in built:
            host.dataplane.ensure_network(VNI, MTU, host.vtep)
            endpoint_id = "test" + host.mac.replace(":", "") * 5
            # the port takes the container's addresses only (test_ipv6 adds the IPv6 one)
            addresses = (host.container_ip, "fd00:50::" + host.container_ip.rsplit(".", 1)[1])
            container_side = host.dataplane.ensure_endpoint(VNI, endpoint_id, host.mac, MTU, addresses)
            move_link(host.netns, container_side, host.container)  # what Docker does on Join
            set_up_interface(host.container, container_side, host.container_ip)
        yield built[0], built[1]
    finally:
        for host in built:
            host.dataplane.close()


def program_peers(local: Host, remote: Host | None) -> list[str]:
    """What the event loop does: desired state from the cluster view, diff against the kernel, apply."""
    if remote is None:
        desired = PeerState()
    else:
        desired = desired_state([Peer(remote.mac, remote.container_ip, remote.vtep)], [remote.vtep])
    return local.dataplane.apply_peers(VNI, diff(desired, local.dataplane.read_peers(VNI)))


def test_ping_across_vxlan_only_while_peers_are_programmed(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    assert not ping(a.container, b.container_ip, timeout=1.5), "no peers yet: nothing may get through"

    assert program_peers(a, b) == [] and program_peers(b, a) == []
    assert ping(a.container, b.container_ip, timeout=10)
    assert ping(b.container, a.container_ip, timeout=10)
    # a full-size packet (container MTU, DF set) crosses veth, bridge and VXLAN device unfragmented
    assert ping(a.container, b.container_ip, timeout=5, size=MTU - 28)

    assert program_peers(a, None) == [] and program_peers(b, None) == []
    assert a.dataplane.read_peers(VNI) == PeerState()
    assert not ping(a.container, b.container_ip, timeout=1.5), "peers removed: traffic must stop"


def _enable_br_netfilter(netns: str) -> None:
    if read_sysctl(netns, NF_CALL_IPTABLES) is None and shutil.which("modprobe"):
        in_netns(None, "modprobe", "br_netfilter", check=False)
    require(read_sysctl(netns, NF_CALL_IPTABLES) is not None, "br_netfilter is not available in this kernel")
    write_sysctl(netns, NF_CALL_IPTABLES, "1")
    assert read_sysctl(netns, NF_CALL_IPTABLES) == "1"


def test_bridged_frames_never_meet_the_hosts_iptables(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    for host in (a, b):
        _enable_br_netfilter(host.netns)  # what dockerd turns on, in the host's namespace
        in_netns(host.netns, "iptables", "-w", "-P", "FORWARD", "DROP")  # what dockerd sets
        in_netns(host.netns, "iptables", "-w", "-I", "FORWARD", "-j", "DROP")  # and a user's rule
    assert program_peers(a, b) == [] and program_peers(b, a) == []

    # the bridge is in the network's own namespace, where br_netfilter is off: no rule of ours needed
    assert ping(a.container, b.container_ip, timeout=10)
    assert ping(b.container, a.container_ip, timeout=10)
    assert pyoverlay_rules(a.netns) == [] and pyoverlay_rules(b.netns) == []
    counted = in_netns(a.netns, "iptables", "-w", "-L", "FORWARD", "-v", "-x", "-n").stdout.splitlines()[2]
    assert counted.split()[0] == "0", f"a bridged frame went through the host's FORWARD chain: {counted}"


def test_ping_helper_sees_a_local_address(make_netns: Callable[[], str]) -> None:
    netns = make_netns()
    with IPRoute(netns=netns, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    assert ping(netns, "127.0.0.1", timeout=2)
