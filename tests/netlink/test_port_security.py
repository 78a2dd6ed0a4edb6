"""T11 on a real bridge: a "container" that takes a peer's MAC or addresses (frames crafted with AF_PACKET)
gets none of the peer's frames and delivers nothing as the peer; its own frames still pass.

    victim V ──┐
    spoofer S ─┼── veths ── the network's ns: pobr (ports locked, nftables bridge table)
    observer O ┘
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from driver import Dataplane, nft, port_security
from driver.names import bridge_name, veth_names

from .nsutil import TEST_VNI, add_address6, in_netns, move_link, ping, set_up_interface
from .test_traffic import VNI as TRAFFIC_VNI
from .test_traffic import Host, hosts, program_peers  # noqa: F401 (the two hosts fixture)

pytestmark = pytest.mark.netlink

ROOT = Path(__file__).resolve().parents[2]
VNI = TEST_VNI + 7000
COUNT = 10
UNKNOWN_MAC = "02:42:0a:3d:99:99"


@dataclass
class Box:
    """One "container": its namespace, interface, MAC and addresses."""

    netns: str
    iface: str
    mac: str
    ip: str
    ip6: str
    endpoint_id: str


@pytest.fixture
def lan(make_netns: Callable[[], str]) -> Iterator[tuple[Dataplane, dict[str, Box]]]:
    host = make_netns()
    with Dataplane(netns=host, announce_again=()) as dataplane:
        dataplane.ensure_network(VNI, 1450, "192.0.2.1")
        boxes = {}
        for index, role in enumerate(("victim", "spoofer", "observer"), start=2):
            mac, ip, ip6 = f"02:42:0a:3d:00:0{index}", f"10.61.0.{index}", f"fd00:61::{index}"
            endpoint_id = f"t{index}" + mac.replace(":", "") * 5  # distinct in the first 12 characters
            side = dataplane.ensure_endpoint(VNI, endpoint_id, mac, 1450, (ip, ip6))
            netns = make_netns()
            move_link(host, side, netns)
            set_up_interface(netns, side, ip)
            add_address6(netns, side, ip6)
            boxes[role] = Box(netns, side, mac, ip, ip6, endpoint_id)
        yield dataplane, boxes


def counted(listeners: list[Box], needle: bytes, sender: Box, kind: str, **frame: str) -> list[int]:
    """Frames containing needle that each listener saw while sender sent COUNT crafted frames."""
    counters = [
        subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{box.netns}",
                sys.executable,
                "-m",
                "tests.spoof",
                "count",
                "--iface",
                box.iface,
                "--needle",
                needle.hex(),
                "--seconds",
                "1.5",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for box in listeners
    ]
    time.sleep(0.4)  # bound
    args = [f"--{k.replace('_', '-')}={v}" for k, v in frame.items()]
    in_netns(sender.netns, sys.executable, "-m", "tests.spoof", "send", "--iface", sender.iface,
             "--kind", kind, f"--count={COUNT}", *args)  # fmt: skip
    return [int(c.communicate(timeout=10)[0]) for c in counters]


def test_own_frames_pass_and_spoofed_sources_are_dropped(lan: tuple[Dataplane, dict[str, Box]]) -> None:
    _, box = lan
    v, s, o = box["victim"], box["spoofer"], box["observer"]
    own = {"src_mac": s.mac, "dst_mac": o.mac, "src_ip": s.ip, "dst_ip": o.ip, "marker": "own4"}
    assert counted([o], b"own4", s, "udp4", **own) == [COUNT]  # the control
    own6 = {**own, "src_ip": s.ip6, "dst_ip": o.ip6, "marker": "own6"}
    assert counted([o], b"own6", s, "udp6", **own6) == [COUNT]
    spoofs = {
        "peer's MAC": ("udp4", {**own, "src_mac": v.mac, "src_ip": v.ip, "marker": "mac4"}),
        "peer's IPv4": ("udp4", {**own, "src_ip": v.ip, "marker": "ip4"}),
        "peer's IPv6": ("udp6", {**own6, "src_ip": v.ip6, "marker": "ip6"}),
    }
    for what, (kind, frame) in spoofs.items():
        assert counted([o], frame["marker"].encode(), s, kind, **frame) == [0], what
    # ARP replies claiming the peer's address, with the spoofer's MAC or the peer's
    for sender_mac in (s.mac, v.mac):
        arp = {"src_mac": sender_mac, "dst_mac": o.mac, "src_ip": v.ip, "dst_ip": o.ip}
        needle = bytes.fromhex(sender_mac.replace(":", "")) + bytes(map(int, v.ip.split(".")))
        assert counted([o], needle, s, "arp", **arp) == [0]
    # a neighbour advertisement for the peer's IPv6 address
    na = {"src_mac": s.mac, "dst_mac": "33:33:00:00:00:01", "src_ip": v.ip6, "dst_ip": "ff02::1"}
    assert counted([o], ipaddress.IPv6Address(v.ip6).packed, s, "na", **na) == [0]


def test_a_spoofer_with_the_peers_mac_gets_none_of_its_frames(lan: tuple[Dataplane, dict[str, Box]]) -> None:
    dataplane, box = lan
    v, s, o = box["victim"], box["spoofer"], box["observer"]
    in_netns(
        s.netns, "ip", "link", "set", "dev", s.iface, "address", v.mac
    )  # what a NET_ADMIN container can do
    # the spoofer sends as the peer (the bridge would learn the MAC on its port, were it not locked)
    frame = {"src_mac": v.mac, "dst_mac": o.mac, "src_ip": v.ip, "dst_ip": o.ip, "marker": "as-peer"}
    assert counted([o], b"as-peer", s, "udp4", **frame) == [0]
    to_victim = {"src_mac": o.mac, "dst_mac": v.mac, "src_ip": o.ip, "dst_ip": v.ip, "marker": "for-peer"}
    assert counted([v, s], b"for-peer", o, "udp4", **to_victim) == [COUNT, 0]
    # a MAC the bridge does not know is flooded to no container port
    unknown = {**to_victim, "dst_mac": UNKNOWN_MAC, "marker": "unknown"}
    assert counted([v, s], b"unknown", o, "udp4", **unknown) == [0, 0]
    # broadcast still reaches every port
    broadcast = {**to_victim, "dst_mac": "ff:ff:ff:ff:ff:ff", "marker": "bcast"}
    assert counted([v, s], b"bcast", o, "udp4", **broadcast) == [COUNT, COUNT]


def test_a_ports_rules_go_with_the_port(lan: tuple[Dataplane, dict[str, Box]]) -> None:
    dataplane, box = lan
    path = dataplane.network_netns(VNI)
    ports = {veth_names(b.endpoint_id)[0] for b in box.values()}
    assert port_security.secured_ports(path) == ports
    gone = box["spoofer"].endpoint_id
    dataplane.delete_endpoint(gone, VNI)
    assert dataplane.settle(timeout=10)
    assert port_security.secured_ports(path) == ports - {veth_names(gone)[0]}
    # resent (Docker retrying): the same rules, made again in one transaction
    v = box["victim"]
    dataplane.ensure_endpoint(VNI, v.endpoint_id, v.mac, 1450, (v.ip, v.ip6))
    assert port_security.secured_ports(path) == ports - {veth_names(gone)[0]}


def test_missing_rules_are_made_and_a_gone_ports_removed(lan: tuple[Dataplane, dict[str, Box]]) -> None:
    dataplane, box = lan
    path = dataplane.network_netns(VNI)
    v, o = box["victim"], box["observer"]
    victim_port = veth_names(v.endpoint_id)[0]
    port_security.release_port(path, victim_port)  # rules lost (or a network made before port security)
    stray = "pohgone0000000"
    nft.commit(path, port_security._port_messages(stray, "02:42:0a:3d:00:99", ("10.61.0.99",)))  # a port gone
    assert victim_port not in port_security.secured_ports(path) and stray in port_security.secured_ports(path)
    wanted = {b.endpoint_id: (b.mac, (b.ip, b.ip6)) for b in (v, o)}
    assert dataplane.secure_endpoints(VNI, wanted) == []
    assert victim_port in port_security.secured_ports(path)
    assert stray not in port_security.secured_ports(path)
    as_peer = {"src_mac": v.mac, "dst_mac": o.mac, "src_ip": v.ip, "dst_ip": o.ip, "marker": "back"}
    assert counted([o], b"back", v, "udp4", **as_peer) == [COUNT]  # the victim's own frames pass again


def bridge_port_of(netns: str, mac: str) -> set[str]:
    """The bridge ports the network's bridge has mac on (its own table, not the VXLAN device's)."""
    with IPRoute(netns=netns, flags=0) as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        bridge = ipr.link_lookup(ifname=bridge_name(TRAFFIC_VNI))[0]
        entries = ipr.fdb("dump", master=bridge)
    return {names.get(e["ifindex"]) for e in entries if e.get("NDA_LLADDR") == mac and not e.get("NDA_DST")}


def test_an_endpoints_mac_stays_on_its_port_when_its_announcement_comes_back(
    hosts: tuple[Host, Host],  # noqa: F811
) -> None:
    """Host B announces A's endpoint (as B's event loop does); the broadcast floods back to A over VXLAN
    with the endpoint's MAC as source. Learning on the VXLAN port must not take the MAC off the endpoint's
    port, whose own learning is off: the endpoint would never get a unicast frame again."""
    a, b = hosts
    assert program_peers(a, b) == [] and program_peers(b, a) == []
    port = "poh" + ("test" + a.mac.replace(":", "") * 5)[:12]
    assert bridge_port_of(a.dataplane.network_netns(TRAFFIC_VNI), a.mac) == {port}
    ip6 = "fd00:50::" + a.container_ip.rsplit(".", 1)[1]  # an IPv6 announcement (a neighbour advertisement)
    for _ in range(3):  # crosses hosts: the VXLAN device's proxy only answers ARP and solicitations
        b.dataplane.announce(TRAFFIC_VNI, a.container_ip, a.mac)
        b.dataplane.announce(TRAFFIC_VNI, ip6, a.mac)
    time.sleep(0.5)
    assert bridge_port_of(a.dataplane.network_netns(TRAFFIC_VNI), a.mac) == {port}
    assert ping(b.container, a.container_ip, timeout=10)
