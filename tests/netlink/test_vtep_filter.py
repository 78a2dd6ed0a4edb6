"""T10 in throwaway namespaces: crafted VXLAN packets from a non-member underlay address are dropped by
the host's allow-list, the same packets from a member's VTEP are delivered into the container, and a
member removed from the list is dropped afterwards.

    attacker 192.0.2.9 ┐
    member   192.0.2.1 ┴─ hostA ── underlay veth ── hostB (192.0.2.2): allow-list ── povx ── pobr ── ctr_b
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from driver import vtep_filter

from .nsutil import in_netns
from .test_traffic import VNI, Host, hosts  # noqa: F401 (the two hosts fixture)

pytestmark = pytest.mark.netlink

ROOT = Path(__file__).resolve().parents[2]
ATTACKER = "192.0.2.9"
COUNT = 20


def delivered(sender_ns: str, source: str, to: Host) -> int:
    """Send COUNT crafted VXLAN packets from source (an address in sender_ns) to the host ``to``, carrying
    UDP for its container; how many its listener got."""
    listener = subprocess.Popen(
        ["ip", "netns", "exec", to.container, sys.executable, "-m", "tests.vxlan_inject", "listen",
         "--seconds", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.4)  # bound
    in_netns(
        sender_ns, sys.executable, "-m", "tests.vxlan_inject", "send", "--source", source, "--to", to.vtep,
        "--vni", str(VNI), "--mac", to.mac, "--ip", to.container_ip, "--count", str(COUNT),
        "--inner-source", "10.50.0.99",
    )  # fmt: skip
    out, _ = listener.communicate(timeout=10)
    return int(out.strip())


def test_only_allowed_vteps_inject_and_the_filter_goes_cleanly(hosts: tuple[Host, Host]) -> None:  # noqa: F811
    a, b = hosts
    with IPRoute(netns=a.netns, flags=0) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="under0")[0], address=ATTACKER, prefixlen=24)
    assert delivered(a.netns, ATTACKER, b) == COUNT  # what issue 12 found: the kernel takes any source

    b.dataplane.vteps.allow({a.vtep}, 4789)
    assert b.dataplane.vteps.allowed() == {a.vtep}
    assert delivered(a.netns, ATTACKER, b) == 0
    assert delivered(a.netns, a.vtep, b) == COUNT  # the control: a member's packets still arrive

    b.dataplane.vteps.allow(set(), 4789)  # a forgotten member
    assert delivered(a.netns, a.vtep, b) == 0

    assert b.dataplane.vteps.remove() is True and b.dataplane.vteps.remove() is False
    assert b.dataplane.vteps.allowed() is None
    assert delivered(a.netns, ATTACKER, b) == COUNT  # what dropped them was the filter


def test_the_filter_follows_a_changed_port_and_refuses_a_bad_address(ns: str) -> None:
    path = f"/run/netns/{ns}"
    vtep_filter.ensure(path, 4789, {"192.0.2.1"})
    vtep_filter.ensure(path, 8472, {"192.0.2.1", "192.0.2.3"})
    listing = in_netns(ns, "nft", "list", "table", "ip", vtep_filter.TABLE, check=False).stdout
    if listing:  # the nft command, where installed, shows the one rule on the new port
        assert "udp dport 8472" in listing and "4789" not in listing
    assert vtep_filter.allowed(path) == {"192.0.2.1", "192.0.2.3"}
    with pytest.raises(Exception, match="not-an-address"):
        vtep_filter.ensure(path, 8472, {"not-an-address"})
    assert vtep_filter.allowed(path) == {"192.0.2.1", "192.0.2.3"}  # unchanged
    assert vtep_filter.remove(path) is True
