"""IPv6 on the real datapath: neighbour entries of remote IPv6 addresses on the VXLAN device, which answers
neighbour solicitations from them (proxy NDP, as it answers ARP), ping6 across two "hosts" only while they
are programmed, the host's ip6tables DROP policy not in their way, and the unsolicited neighbour
advertisement.

ctr_a ── veth ── hostA's network ns: pobr/povx ══ VXLAN over 192.0.2.0/24 ══ hostB: povx/pobr ── veth ── ctr_b
"""

import shutil
import time

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ndmsg import NUD_REACHABLE

from driver import Dataplane, Peer, PeerState, desired_state, diff
from driver.names import veth_names

from .nsutil import add_address6, in_netns, ping6, read_sysctl, require, write_sysctl
from .test_traffic import VNI, Host, hosts  # noqa: F401  (the two-host fixture)

pytestmark = pytest.mark.netlink

NF_CALL_IP6TABLES = "net.bridge.bridge-nf-call-ip6tables"


def ip6(host: Host) -> str:
    return "fd00:50::" + host.container_ip.rsplit(".", 1)[1]


def container_if(host: Host) -> str:
    return veth_names("test" + host.mac.replace(":", "") * 5)[1]


def with_ipv6(pair: tuple[Host, Host]) -> tuple[Host, Host]:
    for host in pair:
        add_address6(host.container, container_if(host), ip6(host))
    return pair


def program(local: Host, remote: Host | None) -> list[str]:
    peers = [Peer(remote.mac, remote.container_ip, remote.vtep, ip6=ip6(remote))] if remote else []
    desired = desired_state(peers, [remote.vtep] if remote else [])
    return local.dataplane.apply_peers(VNI, diff(desired, local.dataplane.read_peers(VNI)))


def test_ipv6_neighbour_entries_read_back_and_go(hosts: tuple[Host, Host]) -> None:  # noqa: F811
    a, b = hosts
    assert program(a, b) == []
    state = a.dataplane.read_peers(VNI)
    assert (ip6(b), b.mac) in state.neigh and (b.container_ip, b.mac) in state.neigh
    assert program(a, b) == [] and a.dataplane.read_peers(VNI) == state  # converged: nothing to do
    assert program(a, None) == [] and a.dataplane.read_peers(VNI) == PeerState()


def test_ping6_across_vxlan_only_while_peers_are_programmed(hosts: tuple[Host, Host]) -> None:  # noqa: F811
    a, b = with_ipv6(hosts)
    assert not ping6(a.container, ip6(b), timeout=1.5), "no peers yet: nothing may get through"
    assert program(a, b) == [] and program(b, a) == []
    assert ping6(a.container, ip6(b), timeout=10)
    assert ping6(b.container, ip6(a), timeout=10)
    # the container learned the remote MAC from the VXLAN device's proxy answer (no NS crossed hosts)
    with IPRoute(netns=a.container, flags=0) as ipr:
        learned = {e.get("NDA_DST"): e.get("NDA_LLADDR") for e in ipr.neigh("dump", family=10)}
    assert learned.get(ip6(b)) == b.mac
    assert program(a, None) == [] and program(b, None) == []
    assert not ping6(a.container, ip6(b), timeout=1.5), "peers removed: traffic must stop"


def test_bridged_ipv6_never_meets_the_hosts_ip6tables(hosts: tuple[Host, Host]) -> None:  # noqa: F811
    require(shutil.which("ip6tables") is not None, "ip6tables is not installed")
    a, b = with_ipv6(hosts)
    for host in (a, b):
        if read_sysctl(host.netns, NF_CALL_IP6TABLES) is None and shutil.which("modprobe"):
            in_netns(None, "modprobe", "br_netfilter", check=False)
        require(read_sysctl(host.netns, NF_CALL_IP6TABLES) is not None, "br_netfilter is not available")
        write_sysctl(host.netns, NF_CALL_IP6TABLES, "1")  # in the host's namespace, as dockerd does
        in_netns(host.netns, "ip6tables", "-w", "-P", "FORWARD", "DROP")  # what dockerd >= 27 sets
    assert program(a, b) == [] and program(b, a) == []
    # the bridge is in the network's namespace, where br_netfilter is off: no ip6tables rule needed
    assert ping6(a.container, ip6(b), timeout=10)
    assert ping6(b.container, ip6(a), timeout=10)
    assert not [
        r
        for r in in_netns(a.netns, "ip6tables", "-w", "-S", "FORWARD").stdout.splitlines()
        if "pyoverlay" in r
    ]


def test_neighbour_advertisement_corrects_a_stale_ipv6_entry(hosts: tuple[Host, Host]) -> None:  # noqa: F811
    a, b = with_ipv6(hosts)
    stale, fresh = "02:42:00:00:aa:02", "02:42:00:00:00:02"
    target = "fd00:50::99"
    with IPRoute(netns=a.container, flags=0) as ipr:
        index = ipr.link_lookup(ifname=container_if(a))[0]
        ipr.neigh("replace", ifindex=index, dst=target, lladdr=stale, state=NUD_REACHABLE, family=10)
    with Dataplane(netns=a.netns, announce_again=()) as dataplane:
        dataplane.announce(VNI, target, fresh)  # what Join does on the endpoint's own host

    def cached() -> str | None:
        with IPRoute(netns=a.container, flags=0) as ipr:
            entries = [e for e in ipr.neigh("dump", family=10) if e.get("NDA_DST") == target]
        return entries[0].get("NDA_LLADDR") if entries else None

    deadline = time.monotonic() + 5
    while cached() != fresh and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cached() == fresh
