"""The pure parts of host exposure: its MAC, its id, and which endpoint an event loop puts on its bridge."""

from __future__ import annotations

import ipaddress

from kvstore import CONTAINER_KIND, HOST_KIND, Endpoint
from plugin.endpoint_rules import own_host_address, remote_peers
from plugin.services.exposure import exposure_id
from plugin.services.network import mac_for_address


def test_the_mac_is_02_42_and_the_address_bytes() -> None:
    assert mac_for_address(ipaddress.IPv4Interface("10.30.0.254")) == "02:42:0a:1e:00:fe"
    assert mac_for_address(ipaddress.IPv4Interface("192.168.1.2/24")) == "02:42:c0:a8:01:02"


def test_the_id_is_per_host_and_network_and_never_a_veth_name() -> None:
    assert exposure_id("h1", "n1") == exposure_id("h1", "n1") != exposure_id("h2", "n1")
    assert exposure_id("h1", "n1") != exposure_id("h1", "n2")
    assert "-" in exposure_id("h1", "n1")  # veth names take 12 alphanumerics of an id: never one of these


def test_only_this_hosts_exposure_goes_on_its_bridge_and_the_others_are_peers() -> None:
    def record(eid: str, host: str, kind: str, address: str) -> Endpoint:
        return Endpoint(
            eid,
            "n",
            host,
            f"192.0.2.{host[-1]}",
            mac_for_address(ipaddress.IPv4Interface(address)),
            address,
            kind=kind,
        )

    endpoints = {
        e.endpoint_id: e
        for e in (
            record("c1", "h1", CONTAINER_KIND, "10.0.0.2/24"),
            record("x1", "h1", HOST_KIND, "10.0.0.3/24"),
            record("x2", "h2", HOST_KIND, "10.0.0.4/24"),
        )
    }
    assert own_host_address("h1", endpoints) == ("10.0.0.3/24", "02:42:0a:00:00:03")
    assert own_host_address("h3", endpoints) is None
    assert {p.ip for p in remote_peers("h1", endpoints)} == {"10.0.0.4"}
    old = Endpoint.from_json({"endpoint_id": "e", "network_id": "n", "host_id": "h", "vtep": "v", "mac": "m"})
    assert old.kind == CONTAINER_KIND and old.address_owner == "m"  # a record written before "kind"
