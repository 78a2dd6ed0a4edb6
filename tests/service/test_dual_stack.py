"""Dual-stack and IPv6-only networks through the services, as dockerd calls them: pools and gateways of both
families, endpoints with both addresses, remote peers' IPv6 neighbour entries and announcements, and
what Docker 20.10 cannot make (an IPv6-only network) refused with nothing left behind."""

from __future__ import annotations

from typing import Any

import pytest

from driver import PeerState
from driver.peers import FLOOD_MAC
from kvstore.alloc import VNI_MIN
from plugin.errors import BadRequest
from plugin.messages import (
    CreateEndpointRequest,
    CreateNetworkRequest,
    RequestAddressRequest,
    RequestPoolRequest,
)

from .conftest import GATEWAY, Host, Net, new_id
from .test_docker_sync import daemon_of, listed
from .test_exposure import exposing


def request_pool(host: Host, subnet: str, v6: bool) -> dict[str, Any]:
    body = {"AddressSpace": "pyoverlay", "Pool": subnet, "SubPool": "", "V6": v6}
    return host.ipam.request_pool(RequestPoolRequest.parse(body))


def gateway(host: Host, pool_id: str) -> str:
    body = {"PoolID": pool_id, "Options": GATEWAY}
    return host.ipam.request_address(RequestAddressRequest.parse(body))["Address"]


def create(host: Host, v4: str | None, v6: str, docker_id: str | None = None) -> tuple[str, str | None, str]:
    """`docker network create --ipv6 [--ipv4=false] --subnet v4 --subnet v6` as dockerd calls it:
    (docker id, IPv4 pool id, IPv6 pool id)."""
    docker_id = docker_id or new_id()
    pool4 = request_pool(host, v4, False) if v4 is not None else None
    pool6 = request_pool(host, v6, True)
    body = {
        "NetworkID": docker_id,
        "Options": {
            "com.docker.network.generic": {},
            "com.docker.network.enable_ipv6": True,
            **({"com.docker.network.enable_ipv4": False} if pool4 is None else {}),
        },
        "IPv4Data": [
            {"AddressSpace": "pyoverlay", "Pool": pool4["Pool"], "Gateway": gateway(host, pool4["PoolID"])}
        ]
        if pool4
        else [],
        "IPv6Data": [
            {"AddressSpace": "pyoverlay", "Pool": pool6["Pool"], "Gateway": gateway(host, pool6["PoolID"])}
        ],
    }
    host.network.create_network(CreateNetworkRequest.parse(body))
    return docker_id, pool4["PoolID"] if pool4 else None, pool6["PoolID"]


def endpoint(host: Host, docker_id: str, pool4: str | None, pool6: str) -> tuple[str, str | None, str, str]:
    """RequestAddress for each family, then CreateEndpoint: (endpoint id, IPv4 CIDR, IPv6 CIDR, MAC)."""
    endpoint_id = new_id()
    cidr4 = (
        host.ipam.request_address(RequestAddressRequest.parse({"PoolID": pool4}))["Address"]
        if pool4
        else None
    )
    cidr6 = host.ipam.request_address(RequestAddressRequest.parse({"PoolID": pool6}))["Address"]
    interface = {"AddressIPv6": cidr6, **({"Address": cidr4} if cidr4 else {})}
    body = {"NetworkID": docker_id, "EndpointID": endpoint_id, "Interface": interface}
    answer = host.network.create_endpoint(CreateEndpointRequest.parse(body))
    return endpoint_id, cidr4, cidr6, answer["Interface"]["MacAddress"]


def test_dual_stack_network_and_endpoint(host_a: Host):
    docker_id, pool4, pool6 = create(host_a, "10.60.0.0/24", "fd00:60::/64")
    network = host_a.store.network_for("host-a", docker_id)
    assert (network.subnet, network.gateway) == ("10.60.0.0/24", "10.60.0.1")
    assert (network.subnet6, network.pool6_id, network.gateway6) == (
        "fd00:60::/64",
        "fd00:60::/64",
        "fd00:60::1",
    )
    assert network.vni in host_a.dp.networks  # IPv6 needs nothing more in the network's namespace

    endpoint_id, cidr4, cidr6, mac = endpoint(host_a, docker_id, pool4, pool6)
    assert (cidr4, cidr6) == ("10.60.0.2/24", "fd00:60::2/64")
    assert mac == "02:42:0a:3c:00:02"  # the IPv4 rule, as before
    record = host_a.store.get_endpoint(endpoint_id)
    assert (record.address, record.address6, record.ip6) == (cidr4, cidr6, "fd00:60::2")
    # both addresses adopted by the MAC: forget-host and Docker sync find them by it
    assert host_a.store.list_addresses(pool6)["fd00:60::2"] == mac
    assert host_a.store.list_addresses(pool4)["10.60.0.2"] == mac


def test_ipv6_only_network_derives_the_mac_from_the_ipv6_address(host_a: Host):
    docker_id, pool4, pool6 = create(host_a, None, "fd00:61::/64")
    network = host_a.store.network_for("host-a", docker_id)
    assert (network.subnet, network.pool_id, network.pool_ids) == (None, None, ("fd00:61::/64",))
    _, cidr4, cidr6, mac = endpoint(host_a, docker_id, pool4, pool6)
    assert (cidr4, cidr6) == (None, "fd00:61::2/64")
    assert mac == "02:42:00:00:00:02"  # 02:42 + the address's last four bytes


def test_remote_dual_stack_endpoints_get_neighbour_entries_of_both_families_and_are_announced(
    host_a: Host, host_b: Host
):
    mine, _, _ = create(host_a, "10.62.0.0/24", "fd00:62::/64")
    host_a.loop.relist()
    host_a.settle()
    theirs, pool4, pool6 = create(host_b, "10.62.0.0/24", "fd00:62::/64")
    _, cidr4, cidr6, mac = endpoint(host_b, theirs, pool4, pool6)
    wanted = PeerState(
        fdb=frozenset({(mac, host_b.vtep), (FLOOD_MAC, host_b.vtep)}),
        neigh=frozenset({(cidr4.split("/")[0], mac), (cidr6.split("/")[0], mac)}),
    )
    host_a.drain(lambda: host_a.dp.peers.get(VNI_MIN) == wanted)
    host_a.drain(lambda: {ip for _, ip, _ in host_a.dp.announced} >= {"10.62.0.2", "fd00:62::2"})
    assert host_a.store.network_for("host-a", mine) == host_b.store.network_for("host-b", theirs)


def test_ipv6_only_on_a_docker_that_gives_ipv4_anyway_is_refused_and_leaves_nothing(host_a: Host):
    # Docker 20.10 passes -o com.docker.network.enable_ipv4=false on but allocates IPv4 all the same
    pool4 = request_pool(host_a, "10.63.0.0/24", False)
    pool6 = request_pool(host_a, "fd00:63::/64", True)
    body = {
        "NetworkID": new_id(),
        "Options": {
            "com.docker.network.generic": {"com.docker.network.enable_ipv4": "false"},
            "com.docker.network.enable_ipv6": True,
        },
        "IPv4Data": [{"AddressSpace": "pyoverlay", "Pool": pool4["Pool"], "Gateway": ""}],
        "IPv6Data": [{"AddressSpace": "pyoverlay", "Pool": pool6["Pool"], "Gateway": ""}],
    }
    with pytest.raises(BadRequest, match="IPv6-only networks need Docker 28 or later"):
        host_a.network.create_network(CreateNetworkRequest.parse(body))
    assert host_a.store.list_networks() == [] and host_a.dp.networks == {}


def test_endpoint_with_an_ipv6_address_outside_the_subnet_is_refused(host_a: Host):
    docker_id, pool4, pool6 = create(host_a, "10.64.0.0/24", "fd00:64::/64")
    body = {
        "NetworkID": docker_id,
        "EndpointID": new_id(),
        "Interface": {"Address": "10.64.0.9/24", "AddressIPv6": "fd00:99::9/64"},
    }
    with pytest.raises(BadRequest, match="address fd00:99::9/64 is not in network .* subnet fd00:64::/64"):
        host_a.network.create_endpoint(CreateEndpointRequest.parse(body))
    body["Interface"] = {"Address": "10.64.0.9/24"}
    with pytest.raises(BadRequest, match="has no IPv6 address"):
        host_a.network.create_endpoint(CreateEndpointRequest.parse(body))
    assert host_a.store.list_endpoints() == []


@pytest.mark.parametrize("v4", ["10.65.0.0/24", None], ids=["dual stack", "ipv6 only"])
def test_an_ipv6_network_made_elsewhere_is_created_here_with_its_subnets(host_a: Host, host_b: Host, v4):
    theirs, _, _ = create(host_b, v4, "fd00:65::/64")
    daemon_b, daemon_a = daemon_of(host_b), daemon_of(host_a)
    daemon_b.add(Net(theirs, "", "", ""), "web6")
    listed(host_a)
    listed(host_b).sync.sync_once()  # learns the name
    host_a.drain(lambda: host_a.loop.view().networks[theirs].name == "web6")
    host_a.sync.sync_once()
    [made] = daemon_a.created
    subnets = [(c["Subnet"], c["Gateway"]) for c in made["ipam"]["Config"]]
    assert subnets == [*([(v4, "10.65.0.1")] if v4 else []), ("fd00:65::/64", "fd00:65::1")]
    assert made["enable_ipv6"] is True
    # IPv6-only: the option Docker >= 27 reads as --ipv4=false (Docker 20.10 passes it to us: refused)
    assert made["options"] == (None if v4 else {"com.docker.network.enable_ipv4": "false"})


def test_expose_on_an_ipv6_only_network_says_it_gives_ipv4(host_a: Host):
    docker_id, _, _ = create(host_a, None, "fd00:66::/64")
    host_a.store.set_network_name(docker_id, "six")
    with pytest.raises(BadRequest, match="network six is IPv6-only: pyoverlay expose gives a host an IPv4"):
        exposing(host_a).expose("six")
