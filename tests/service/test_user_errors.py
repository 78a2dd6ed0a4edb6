"""What a user reads when pyoverlay refuses a command: every refusal names the thing by the name the user
typed, says why, and says what to do. The messages are compared in full: they are the interface."""

from __future__ import annotations

import logging

import pytest

from kvstore import Conflict
from kvstore.alloc import VNI_MIN
from plugin.errors import BadRequest, ConflictError, UnknownObject
from plugin.messages import (
    CreateEndpointRequest,
    CreateNetworkRequest,
    EndpointRequest,
    RequestAddressRequest,
    RequestPoolRequest,
)

from .conftest import GATEWAY, MAC_OPTION, Host, network_body, new_id, new_mac

MTU = "com.docker.network.driver.mtu"
KNOWN = "the driver options it knows: -o com.docker.network.driver.mtu=N, -o encrypted"


def create(host: Host, options: dict[str, str], subnet: str = "10.30.0.0/24") -> str:
    """`docker network create -d pyoverlay --ipam-driver pyoverlay --subnet SUBNET -o k=v …` as dockerd
    calls it (pool, gateway, network); returns the Docker network id."""
    pool = host.ipam.request_pool(RequestPoolRequest.parse({"AddressSpace": "pyoverlay", "Pool": subnet}))
    body = {"PoolID": pool["PoolID"], "Options": GATEWAY}
    gateway = host.ipam.request_address(RequestAddressRequest.parse(body))["Address"]
    body = network_body(new_id(), pool["Pool"], gateway)
    body["Options"]["com.docker.network.generic"] = options
    host.network.create_network(CreateNetworkRequest.parse(body))
    return body["NetworkID"]


def refused(host: Host, options: dict[str, str]) -> str:
    with pytest.raises(BadRequest) as caught:
        create(host, options)
    assert host.store.list_networks() == [] and host.dp.networks == {}
    return str(caught.value)


# -- driver options ---------------------------------------------------------------------------------


def test_unknown_driver_options_are_refused_with_the_known_ones(host_a: Host):
    assert refused(host_a, {"com.docker.network.bridge.name": "br9"}) == (
        f"pyoverlay does not know the driver option -o com.docker.network.bridge.name; {KNOWN}"
    )
    assert refused(host_a, {"vxlan_id": "42", MTU: "1400", "foo": ""}) == (
        f"pyoverlay does not know the driver options -o foo, -o vxlan_id; {KNOWN}"
    )


def test_encrypted_takes_no_value_or_a_boolean(host_a: Host):
    assert (
        refused(host_a, {"encrypted": "yes please"})
        == "-o encrypted=yes please: the value must be true or false"
    )


def test_encrypted_false_is_a_plain_network(host_a: Host):
    docker_id = create(host_a, {"encrypted": "false"})
    network = host_a.store.network_for("host-a", docker_id)
    assert not network.encrypted and "encrypted" not in network.options


def test_options_docker_itself_reads_are_accepted_and_kept_for_other_hosts(host_a: Host):
    # Docker >= 27 acts on these `-o` itself and leaves them in the map; Docker sync passes them on
    options = {"com.docker.network.enable_ipv4": "true", "com.docker.network.enable_ipv6": "false"}
    docker_id = create(host_a, {**options, MTU: "1400"})
    network = host_a.store.network_for("host-a", docker_id)
    assert network.options == {**options, MTU: "1400"} and network.mtu == 1400


@pytest.mark.parametrize(
    "options, message",
    [
        ({"com.docker.network.enable_ipv6": "true"}, "got 0; create the network with --ipv6"),
        ({"com.docker.network.enable_ipv6": "yes"}, "-o com.docker.network.enable_ipv6=yes: the value must"),
        ({"com.docker.network.enable_ipv4": "0"}, "IPv6-only networks need Docker 28 or later"),
    ],
)
def test_docker_options_pyoverlay_cannot_honour_are_refused(host_a: Host, options, message):
    # Docker 20.10 leaves these to the driver: ignoring them would give the user what they did not ask
    assert message in refused(host_a, options)


# -- MTU -----------------------------------------------------------------------------------------------


def test_mtu_above_what_the_underlay_carries_is_refused_not_capped(host_a: Host):
    assert refused(host_a, {MTU: "9000"}) == (
        "-o com.docker.network.driver.mtu=9000 is more than this host's underlay carries: containers can "
        "have at most 1450 (underlay MTU 1500 - 50 bytes of VXLAN headers). Use -o "
        "com.docker.network.driver.mtu=1450 or less, leave the option out to get 1450, or raise the "
        "underlay's MTU"
    )
    assert "1451 is more than" in refused(host_a, {MTU: "1451"})
    create(host_a, {MTU: "1450"})
    assert host_a.dp.networks[VNI_MIN]["mtu"] == 1450


@pytest.mark.parametrize(
    "value, message",
    [
        (
            "1.5k",
            "-o com.docker.network.driver.mtu=1.5k: the MTU must be a whole number of bytes, "
            "e.g. -o com.docker.network.driver.mtu=1400",
        ),
        ("", "-o com.docker.network.driver.mtu=: the MTU must be a whole number of bytes"),
        (
            "140",
            "-o com.docker.network.driver.mtu=140 is too small: pyoverlay takes 576 bytes or more (the "
            "datagram size every IPv4 host must accept); leave the option out to get the most the "
            "underlay allows",
        ),
        ("575", "=575 is too small"),
        ("-1", "=-1 is too small"),
    ],
)
def test_mtu_that_is_not_a_number_or_too_small_is_refused(host_a: Host, value: str, message: str):
    assert message in refused(host_a, {MTU: value})


def test_smallest_mtu_accepted_is_576(host_a: Host):
    create(host_a, {MTU: "576"})
    assert host_a.dp.networks[VNI_MIN]["mtu"] == 576


def test_network_made_on_a_larger_underlay_is_capped_where_it_joins(host_a: Host, host_b: Host, caplog):
    host_b.network.underlay_mtu = 9000
    create(host_b, {MTU: "8950"})
    assert host_b.dp.networks[VNI_MIN]["mtu"] == 8950
    # Docker sync on host A creates it with the same options: refusing would leave host A without it
    with caplog.at_level(logging.WARNING):
        create(host_a, {MTU: "8950"})
    assert host_a.dp.networks[VNI_MIN]["mtu"] == 1450
    assert "allows 1450: capped" in caplog.text


# -- names and gateways ------------------------------------------------------------------------------


def test_a_second_network_on_a_subnet_names_the_first_by_its_name(host_a: Host):
    net = host_a.create_network("10.20.0.0/24")
    body = RequestPoolRequest.parse({"AddressSpace": "pyoverlay", "Pool": "10.20.0.0/24"})
    with pytest.raises(ConflictError) as unnamed:
        host_a.ipam.request_pool(body)
    assert str(unnamed.value).startswith(
        f"subnet 10.20.0.0/24 is already used by network {net.docker_id[:12]}"
    )
    host_a.store.set_network_name(net.docker_id, "web")  # learned from the daemon by Docker sync
    with pytest.raises(ConflictError) as named:
        host_a.ipam.request_pool(body)
    assert str(named.value) == (
        "subnet 10.20.0.0/24 is already used by network web on this host; use network web, or give the "
        "new network another --subnet"
    )


def test_docker_run_ip_of_the_gateway_says_it_is_the_gateway(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    body = {"PoolID": net.pool_id, "Address": "10.30.0.1", "Options": {MAC_OPTION: new_mac()}}
    with pytest.raises(Conflict) as caught:
        host_a.ipam.request_address(RequestAddressRequest.parse(body))
    assert str(caught.value) == (
        "address 10.30.0.1 is the gateway of pool 10.30.0.0/24: it cannot be given to a container; "
        "choose another address"
    )
    host_a.create_endpoint(net)  # a taken address of a container still reads "in use"
    body = {"PoolID": net.pool_id, "Address": "10.30.0.2", "Options": {MAC_OPTION: new_mac()}}
    with pytest.raises(Conflict, match=r"^address 10.30.0.2 is already in use in pool 10.30.0.0/24$"):
        host_a.ipam.request_address(RequestAddressRequest.parse(body))


def test_another_gateway_for_a_subnet_in_use_names_the_gateway(host_a: Host, host_b: Host):
    host_a.create_network("10.30.0.0/24")
    pool = host_b.ipam.request_pool(
        RequestPoolRequest.parse({"AddressSpace": "pyoverlay", "Pool": "10.30.0.0/24"})
    )
    body = {"PoolID": pool["PoolID"], "Address": "10.30.0.254", "Options": GATEWAY}
    with pytest.raises(Conflict) as caught:
        host_b.ipam.request_address(RequestAddressRequest.parse(body))
    assert str(caught.value) == (
        "pool 10.30.0.0/24 already has gateway 10.30.0.1, not 10.30.0.254: use --gateway 10.30.0.1, "
        "or leave --gateway out"
    )


def test_endpoint_errors_name_the_network(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    other = host_a.create_network("10.31.0.0/24")
    host_a.store.set_network_name(net.docker_id, "web")
    host_a.store.set_network_name(other.docker_id, "db")
    body = {"NetworkID": net.docker_id, "EndpointID": new_id(), "Interface": {"Address": "10.99.0.5/24"}}
    with pytest.raises(
        BadRequest, match=r"^address 10.99.0.5/24 is not in network web's subnet 10.30.0.0/24$"
    ):
        host_a.network.create_endpoint(CreateEndpointRequest.parse(body))
    endpoint_id, _, _ = host_a.create_endpoint(other)
    wrong = EndpointRequest.parse({"NetworkID": net.docker_id, "EndpointID": endpoint_id})
    with pytest.raises(UnknownObject, match=rf"^endpoint {endpoint_id[:12]} is not on network web$"):
        host_a.network.join(wrong)
