"""Dataplane.announce on a real bridge: a neighbour that cached another MAC for the IP is corrected, and
the bridge learns the MAC on no wrong port.

neighbour ns ── veth ── network's ns: pobr (+ povx) ◀── gratuitous ARP sent through the bridge device
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ndmsg import NUD_REACHABLE

from driver import Dataplane, Peer, PeerState, desired_state, diff
from driver.announce import garp_frame
from driver.names import bridge_name, veth_names, vxlan_name
from driver.sockets import PacketSockets

from .nsutil import TEST_VNI, move_link, net_ns, set_up_interface

pytestmark = pytest.mark.netlink

VNI = TEST_VNI + 6000
IP = "10.60.0.2"  # the endpoint that (re)appears
OLD_MAC, NEW_MAC = "02:42:0a:3c:aa:02", "02:42:0a:3c:00:02"
NEIGHBOUR_MAC = "02:42:0a:3c:00:01"


@dataclass
class Bench:
    host: str
    neighbour: str
    dataplane: Dataplane
    neighbour_port: str  # the neighbour's host-side veth on the bridge


@pytest.fixture
def bench(make_netns: Callable[[], str]) -> Iterator[Bench]:
    host, neighbour = make_netns(), make_netns()
    with Dataplane(netns=host, announce_again=()) as dataplane:
        dataplane.ensure_network(VNI, 1450, "192.0.2.1")
        endpoint_id = "test" + NEIGHBOUR_MAC.replace(":", "") * 5
        container_side = dataplane.ensure_endpoint(VNI, endpoint_id, NEIGHBOUR_MAC, 1450)
        move_link(host, container_side, neighbour)
        set_up_interface(neighbour, container_side, "10.60.0.1")
        with IPRoute(netns=neighbour, flags=0) as ipr:
            index = ipr.link_lookup(ifname=container_side)[0]
            ipr.neigh("replace", ifindex=index, dst=IP, lladdr=OLD_MAC, state=NUD_REACHABLE)
        yield Bench(host, neighbour, dataplane, "poh" + endpoint_id[:12])


def neighbour_mac(bench: Bench) -> str | None:
    with IPRoute(netns=bench.neighbour, flags=0) as ipr:
        entries = [e for e in ipr.neigh("dump", family=2) if e.get("NDA_DST") == IP]
    return entries[0].get("NDA_LLADDR") if entries else None


def learned_ports(bench: Bench, mac: str) -> set[str]:
    """The bridge ports the bridge's own table has the MAC on (learned or otherwise)."""
    with IPRoute(netns=net_ns(bench.host, VNI), flags=0) as ipr:
        bridge = ipr.link_lookup(ifname=bridge_name(VNI))[0]
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        entries = ipr.fdb("dump", master=bridge)
    return {names.get(e["ifindex"]) for e in entries if e.get("NDA_LLADDR") == mac and not e.get("NDA_DST")}


def wait_for_mac(bench: Bench, mac: str, timeout: float = 5.0) -> str | None:
    deadline = time.monotonic() + timeout
    while (seen := neighbour_mac(bench)) != mac and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def test_a_local_endpoint_announced_corrects_a_neighbours_stale_entry(bench: Bench) -> None:
    assert neighbour_mac(bench) == OLD_MAC
    bench.dataplane.announce(VNI, IP, NEW_MAC)  # what Join does on the endpoint's own host
    assert wait_for_mac(bench, NEW_MAC) == NEW_MAC
    # sent through the bridge device: flooded to the ports, learned on none
    assert learned_ports(bench, NEW_MAC) == set()


def test_a_remote_endpoint_announced_is_learned_only_behind_the_vxlan_device(bench: Bench) -> None:
    # what the event loop does for an endpoint on another host: program it, then announce it
    peers = desired_state([Peer(NEW_MAC, IP, "192.0.2.2")], ["192.0.2.2"])
    assert bench.dataplane.apply_peers(VNI, diff(peers, PeerState())) == []
    bench.dataplane.announce(VNI, IP, NEW_MAC)
    assert wait_for_mac(bench, NEW_MAC) == NEW_MAC
    # the VXLAN device's proxy ARP answers the announcement from its neighbour entry; that answer is
    # the only frame with the MAC the bridge receives, on the VXLAN port: never the neighbour's port
    assert learned_ports(bench, NEW_MAC) <= {vxlan_name(VNI)}
    assert bench.neighbour_port not in learned_ports(bench, NEW_MAC)


def test_a_mac_learned_behind_the_vxlan_device_is_forgotten_when_it_becomes_local(bench: Bench) -> None:
    # the IP was on another host (announced here: learned on the VXLAN port); now it comes back here
    peers = desired_state([Peer(NEW_MAC, IP, "192.0.2.2")], ["192.0.2.2"])
    assert bench.dataplane.apply_peers(VNI, diff(peers, PeerState())) == []
    bench.dataplane.announce(VNI, IP, NEW_MAC)
    assert wait_for_mac(bench, NEW_MAC) == NEW_MAC
    assert learned_ports(bench, NEW_MAC) == {vxlan_name(VNI)}
    assert bench.dataplane.apply_peers(VNI, diff(PeerState(), bench.dataplane.read_peers(VNI))) == []
    endpoint_id = "test" + NEW_MAC.replace(":", "") * 5
    bench.dataplane.ensure_endpoint(VNI, endpoint_id, NEW_MAC, 1450)
    # else frames for the MAC arriving over VXLAN would be dropped (sent back to their ingress port): the
    # port's static entry (port security) moved it
    assert learned_ports(bench, NEW_MAC) == {veth_names(endpoint_id)[0]}


def test_one_socket_sends_every_frame_and_outlives_a_missing_interface(bench: Bench) -> None:
    sender = PacketSockets()
    net = bench.dataplane.network_netns(VNI)
    try:
        with pytest.raises(OSError):
            sender.send(net, "nosuch0", garp_frame(IP, NEW_MAC))  # ENODEV, as a vanished bridge gives
        sock = sender._socket(net)
        sender.send(net, bridge_name(VNI), garp_frame(IP, NEW_MAC))
        assert wait_for_mac(bench, NEW_MAC) == NEW_MAC
        sender.send(net, bridge_name(VNI), garp_frame(IP, OLD_MAC))
        assert wait_for_mac(bench, OLD_MAC) == OLD_MAC
        assert sender._socket(net) is sock  # no socket per frame: closing one waits for an RCU grace period
    finally:
        sender.close()
