import re

import pytest

from plugin import messages as m
from plugin.errors import BadRequest


def test_create_network_parses_docker_body():
    req = m.CreateNetworkRequest.parse(
        {
            "NetworkID": "a" * 64,
            "Options": {
                "com.docker.network.enable_ipv6": False,
                "com.docker.network.generic": {
                    "com.docker.network.driver.mtu": "1400",
                    "com.docker.network.enable_ipv6": False,  # Docker sends strings; others are read as str
                },
            },
            "IPv4Data": [{"AddressSpace": "pyoverlay", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}],
            "IPv6Data": [],
        }
    )
    assert req.mtu == 1400
    assert req.generic["com.docker.network.enable_ipv6"] == "False"
    assert req.ipv4[0].pool == "10.1.0.0/24" and req.ipv4[0].gateway == "10.1.0.1/24"
    assert not req.ipv6_requested


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "missing field 'NetworkID'"),
        ({"NetworkID": 5}, "must be str"),
        ({"NetworkID": "../etc"}, "not a valid ID"),
        ({"NetworkID": "n", "IPv4Data": [{"Pool": "10.1.0.0/33"}]}, "not an IPv4 subnet"),
        ({"NetworkID": "n", "IPv4Data": "x"}, "must be list"),
        ({"NetworkID": "n", "IPv4Data": [{"Pool": "10.1.0.0/24", "Gateway": "nope"}]}, "CIDR"),
        (
            {
                "NetworkID": "n",
                "Options": {"com.docker.network.generic": {"com.docker.network.driver.mtu": "x"}},
            },
            "must be a whole number",
        ),
        (
            {
                "NetworkID": "n",
                "Options": {"com.docker.network.generic": {"com.docker.network.driver.mtu": "9"}},
            },
            "too small",
        ),
    ],
)
def test_create_network_refuses_bad_input(body, message):
    with pytest.raises(BadRequest, match=message):
        m.CreateNetworkRequest.parse(body)


EID = "0123456789ab" * 2


def test_endpoint_ids_must_name_interfaces():
    with pytest.raises(BadRequest, match="not a valid ID"):
        m.EndpointRequest.parse({"NetworkID": "n", "EndpointID": "short"})
    with pytest.raises(BadRequest, match="not a valid ID"):
        m.EndpointRequest.parse({"NetworkID": "n", "EndpointID": "a.b-c_0123456789"})
    assert m.EndpointRequest.parse({"NetworkID": "n", "EndpointID": EID}).endpoint_id == EID


def test_create_endpoint_parses_and_validates():
    req = m.CreateEndpointRequest.parse(
        {
            "NetworkID": "n",
            "EndpointID": EID,
            "Interface": {"Address": "10.1.0.5/24", "MacAddress": "02:42:0A:01:00:05"},
        }
    )
    assert str(req.address) == "10.1.0.5/24" and req.mac == "02:42:0a:01:00:05"
    with pytest.raises(BadRequest, match="not a MAC"):
        m.CreateEndpointRequest.parse(
            {"NetworkID": "n", "EndpointID": EID, "Interface": {"MacAddress": "zz"}}
        )
    with pytest.raises(BadRequest, match="is not an IPv4 address"):
        m.CreateEndpointRequest.parse(
            {"NetworkID": "n", "EndpointID": EID, "Interface": {"Address": "fd00::1/64"}}
        )
    with pytest.raises(BadRequest, match="is not an IPv6 address"):
        m.CreateEndpointRequest.parse(
            {"NetworkID": "n", "EndpointID": EID, "Interface": {"AddressIPv6": "10.1.0.5/24"}}
        )
    dual = m.CreateEndpointRequest.parse(
        {
            "NetworkID": "n",
            "EndpointID": EID,
            "Interface": {"Address": "10.1.0.5/24", "AddressIPv6": "fd00::5/64"},
        }
    )
    assert str(dual.ipv6_address) == "fd00::5/64" and str(dual.address) == "10.1.0.5/24"


def test_create_network_reads_ipv6_data_and_ipv4_off():
    body = {
        "NetworkID": "n",
        "IPv4Data": [{"AddressSpace": "pyoverlay", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}],
        "IPv6Data": [{"AddressSpace": "pyoverlay", "Pool": "fd00:1::/64", "Gateway": "fd00:1::1/64"}],
        "Options": {"com.docker.network.enable_ipv6": True},
    }
    req = m.CreateNetworkRequest.parse(body)
    assert req.ipv6_requested and not req.ipv4_disabled
    assert req.ipv6 == (m.IPAMData("pyoverlay", "fd00:1::/64", "fd00:1::1/64"),)
    # Docker 28 --ipv4=false: an option of its own, no IPv4Data
    only6 = m.CreateNetworkRequest.parse(
        {**body, "IPv4Data": [], "Options": {"com.docker.network.enable_ipv4": False}}
    )
    assert only6.ipv4_disabled and only6.ipv4 == []
    generic = {"com.docker.network.generic": {"com.docker.network.enable_ipv4": "false"}}
    assert m.CreateNetworkRequest.parse({**body, "Options": generic}).ipv4_disabled
    for bad, message in [
        ({"Pool": "10.1.0.0/24"}, "IPv6Data.Pool '10.1.0.0/24' is not an IPv6 subnet"),
        ({"Pool": "fd00::/129"}, "is not an IPv6 subnet"),
        (
            {"Pool": "fd00::/64", "Gateway": "10.1.0.1/24"},
            "IPv6Data.Gateway '10.1.0.1/24' is not an IPv6 address",
        ),
    ]:
        with pytest.raises(BadRequest, match=re.escape(message)):
            m.CreateNetworkRequest.parse({**body, "IPv6Data": [bad]})


def test_request_address_gateway_and_mac():
    gw = m.RequestAddressRequest.parse(
        {"PoolID": "10.1.0.0/24", "Options": {"RequestAddressType": "com.docker.network.gateway"}}
    )
    assert gw.is_gateway and gw.mac is None
    req = m.RequestAddressRequest.parse(
        {
            "PoolID": "10.1.0.0/24",
            "Address": "10.1.0.9",
            "Options": {"com.docker.network.endpoint.macaddress": "02:00:00:00:00:01"},
        }
    )
    assert req.address == "10.1.0.9" and req.mac == "02:00:00:00:00:01" and not req.is_gateway
    with pytest.raises(BadRequest, match="not an IP address"):
        m.RequestAddressRequest.parse({"PoolID": "p", "Address": "10.1.0.300"})
    assert m.RequestAddressRequest.parse({"PoolID": "fd00::/64", "Address": "fd00::9"}).address == "fd00::9"
    with pytest.raises(BadRequest, match="missing field 'PoolID'"):
        m.RequestAddressRequest.parse({})


def test_release_address_tolerates_cidr():
    assert (
        m.ReleaseAddressRequest.parse({"PoolID": "10.1.0.0/24", "Address": "10.1.0.9/24"}).address
        == "10.1.0.9"
    )


@pytest.mark.parametrize(
    "parse",
    [
        lambda v: m.parse_mac(v),
        lambda v: m.parse_interface_cidr(v, "Interface.Address"),
        lambda v: m.NetworkRequest.parse({"NetworkID": v}),
        lambda v: m.ReleaseAddressRequest.parse({"PoolID": "10.1.0.0/24", "Address": v}),
        lambda v: m.PoolRequest.parse({"PoolID": v}),
        lambda v: m.CreateNetworkRequest.parse({"NetworkID": "n", "IPv4Data": [{"Pool": v}]}),
        lambda v: m.CreateNetworkRequest.parse({"NetworkID": "n", "Options": {m.GENERIC_OPTIONS: {v: "1"}}}),
        lambda v: m.CreateNetworkRequest.parse(
            {"NetworkID": "n", "Options": {m.GENERIC_OPTIONS: {m.MTU_OPTION: v}}}
        ),
    ],
    ids=["mac", "cidr", "id", "address", "pool-id", "pool", "option", "mtu"],
)
def test_a_huge_value_is_quoted_cut_with_its_length(parse):
    with pytest.raises(BadRequest) as caught:
        parse("z" * 100_000)
    assert len(str(caught.value)) < 400 and "(100000 characters)" in str(caught.value)


@pytest.mark.parametrize(
    "mac", ["05:82:50:b5:82:4a", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"]
)
def test_a_mac_no_interface_can_have_is_refused_before_the_kernel(mac):
    # found by the T12 fuzzer: CreateEndpoint answered 500 "kernel: … Cannot assign requested address"
    body = {"NetworkID": "n", "EndpointID": EID, "Interface": {"Address": "10.1.0.2/24", "MacAddress": mac}}
    with pytest.raises(BadRequest, match="needs a unicast one"):
        m.CreateEndpointRequest.parse(body)
    assert m.parse_mac("02:42:0A:00:00:02") == "02:42:0a:00:00:02"


@pytest.mark.parametrize(
    "parse",
    [
        m.PoolRequest.parse,
        m.RequestAddressRequest.parse,
        lambda body: m.ReleaseAddressRequest.parse({**body, "Address": "10.1.0.2"}),
    ],
    ids=["pool", "request-address", "release-address"],
)
@pytest.mark.parametrize("pool_id", ["p", "", "1" * (1 << 20), "10.1.0.0/24/../x", "10.1.0.1/24"])
def test_a_pool_id_that_is_no_subnet_is_refused_before_the_store(parse, pool_id):
    # found by the T12 fuzzer on etcd: a 1 MiB PoolID became a key etcd refused, answered 503 "etcd refused
    # the request: RESOURCE_EXHAUSTED" as if the store were down
    with pytest.raises(BadRequest, match="is not a pyoverlay pool: its PoolIDs are subnets"):
        parse({"PoolID": pool_id})
    assert parse({"PoolID": "10.1.0.0/24"}).pool_id == "10.1.0.0/24"
