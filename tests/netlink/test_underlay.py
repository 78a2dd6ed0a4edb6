"""Underlay detection in a throwaway namespace."""

import pytest
from pyroute2 import IPRoute

from driver import DataplaneError
from driver.underlay import default_route_address, mtu_for_address

from .nsutil import set_up_interface

pytestmark = pytest.mark.netlink


@pytest.fixture
def uplink(ns: str) -> str:
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("add", ifname="eth9", kind="veth", peer="eth9p", mtu=9000)
        ipr.link("add", ifname="other0", kind="veth", peer="other0p", mtu=1400)
        ipr.link("set", index=ipr.link_lookup(ifname="eth9p")[0], state="up")
    set_up_interface(ns, "other0", "198.51.100.7")
    set_up_interface(ns, "eth9", "203.0.113.5")
    return ns


def test_default_route_address_and_its_mtu(uplink: str) -> None:
    with IPRoute(netns=uplink, flags=0) as ipr:
        ipr.route("add", dst="0.0.0.0/0", gateway="203.0.113.1")

    address = default_route_address(uplink)

    assert address == "203.0.113.5"
    assert mtu_for_address(address, uplink) == 9000
    assert mtu_for_address("198.51.100.7", uplink) == 1400


def test_default_route_preferred_source_wins(uplink: str) -> None:
    with IPRoute(netns=uplink, flags=0) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="eth9")[0], address="203.0.113.6", prefixlen=24)
        ipr.route("add", dst="0.0.0.0/0", gateway="203.0.113.1", prefsrc="203.0.113.6")

    assert default_route_address(uplink) == "203.0.113.6"


def test_no_default_route_is_a_clear_error(uplink: str) -> None:
    with pytest.raises(DataplaneError, match="no IPv4 default route"):
        default_route_address(uplink)


def test_unknown_address_is_a_clear_error(uplink: str) -> None:
    with pytest.raises(DataplaneError, match="no interface holds"):
        mtu_for_address("192.0.2.200", uplink)
    with pytest.raises(DataplaneError, match="not an IP address"):
        mtu_for_address("eth0", uplink)
