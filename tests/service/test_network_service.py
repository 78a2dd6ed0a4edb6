"""NetworkService over a real store and a recording dataplane: records, devices, undo on failure."""

from __future__ import annotations

import ipaddress

import pytest

from driver import DataplaneError
from kvstore import NotFound
from kvstore.alloc import VNI_MIN
from plugin.errors import BadRequest, UnknownObject
from plugin.messages import (
    CreateEndpointRequest,
    CreateNetworkRequest,
    EndpointRequest,
    ReleaseAddressRequest,
)
from plugin.services.network import fix_command, mac_for, mac_for_address

from .conftest import Host, network_body, new_id


def endpoint_body(docker_id: str, endpoint_id: str, address: str, mac: str = "") -> CreateEndpointRequest:
    body = {
        "NetworkID": docker_id,
        "EndpointID": endpoint_id,
        "Interface": {"Address": address, "MacAddress": mac},
    }
    return CreateEndpointRequest.parse(body)


def ids(docker_id: str, endpoint_id: str) -> EndpointRequest:
    return EndpointRequest.parse({"NetworkID": docker_id, "EndpointID": endpoint_id})


# -- networks -------------------------------------------------------------------------------------------


def test_create_network_records_it_and_builds_devices(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    network = host_a.cluster(net)
    assert (network.network_id, network.vni, network.created_by) == (net.docker_id, VNI_MIN, "host-a")
    assert (network.subnet, network.pool_id, network.gateway) == ("10.30.0.0/24", "10.30.0.0/24", "10.30.0.1")
    assert net.gateway == "10.30.0.1/24"
    assert host_a.store.bindings("host-a") == {net.docker_id: net.docker_id}
    assert host_a.dp.networks == {VNI_MIN: {"mtu": 1450, "local_ip": "192.0.2.1", "port": 4789}}
    assert host_a.kicks == [net.docker_id]


def test_resent_create_network_changes_nothing(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    body = network_body(net.docker_id, net.subnet, net.gateway)
    host_a.network.create_network(CreateNetworkRequest.parse(body))
    assert [n.vni for n in host_a.store.list_networks()] == [VNI_MIN]
    assert set(host_a.dp.networks) == {VNI_MIN}
    assert host_a.store.get_pool(net.pool_id).holders == ("host-a",)


def test_mtu_option_lowers_the_device_mtu(host_a: Host):
    body = network_body(new_id(), "10.31.0.0/24", None, space="")
    body["Options"]["com.docker.network.generic"] = {"com.docker.network.driver.mtu": "1400"}
    host_a.network.embedded = True
    host_a.network.create_network(CreateNetworkRequest.parse(body))
    assert host_a.dp.networks[VNI_MIN]["mtu"] == 1400


BAD_NETWORKS = {
    "two ipv6 subnets": (
        {
            **network_body("n1", "10.40.0.0/24", "10.40.0.1/24"),
            "IPv6Data": [{"AddressSpace": "pyoverlay", "Pool": p} for p in ("fd00::/64", "fd01::/64")],
        },
        "exactly one IPv6 subnet, got 2",
    ),
    "ipv6 on default ipam": (
        {**network_body("n1", "10.40.0.0/24", "10.40.0.1/24"), "IPv6Data": [{"Pool": "fd00::/64"}]},
        fix_command(),
    ),
    "two subnets": (
        {
            **network_body("n1", "10.40.0.0/24", None),
            "IPv4Data": [
                {"AddressSpace": "pyoverlay", "Pool": "10.40.0.0/24"},
                {"AddressSpace": "pyoverlay", "Pool": "10.41.0.0/24"},
            ],
        },
        "exactly one IPv4 subnet, got 2",
    ),
    "no subnet": ({**network_body("n1", "10.40.0.0/24", None), "IPv4Data": []}, "got 0"),
    "docker default ipam": (
        network_body("n1", "172.29.0.0/16", "172.29.0.1/16", space="LocalDefault"),
        fix_command(),
    ),
}


@pytest.mark.parametrize("body, message", BAD_NETWORKS.values(), ids=BAD_NETWORKS.keys())
def test_bad_network_is_refused_and_leaves_nothing(host_a: Host, body, message):
    with pytest.raises(BadRequest, match=message.replace("[", r"\[")):
        host_a.network.create_network(CreateNetworkRequest.parse(body))
    assert host_a.store.list_networks() == []
    assert host_a.store.bindings("host-a") == {}
    assert host_a.dp.networks == {} and host_a.dp.calls == []


def test_docker_default_ipam_is_accepted_on_the_embedded_store(make_host):
    host = make_host("solo", "192.0.2.9", embedded=True)
    body = network_body(new_id(), "172.29.0.0/16", "172.29.0.1/16", space="LocalDefault")
    host.network.create_network(CreateNetworkRequest.parse(body))
    [network] = host.store.list_networks()
    assert (network.subnet, network.pool_id, network.gateway) == ("172.29.0.0/16", None, "172.29.0.1")
    assert set(host.dp.networks) == {network.vni}


def test_kernel_failure_on_create_undoes_the_record(host_a: Host):
    host_a.dp.fail_vnis = {VNI_MIN}
    with pytest.raises(DataplaneError, match="injected"):
        host_a.create_network("10.30.0.0/24")
    assert host_a.store.list_networks() == []
    assert host_a.store.bindings("host-a") == {}
    assert host_a.dp.networks == {} and host_a.kicks == []
    host_a.dp.fail_vnis = set()
    net = host_a.create_network("10.30.0.0/24")  # Docker's retry: the VNI and pool were freed
    assert host_a.cluster(net).vni == VNI_MIN


def test_kernel_failure_on_join_undoes_only_this_hosts_binding(host_a: Host, host_b: Host):
    theirs = host_b.create_network("10.30.0.0/24")
    endpoint_id, _, _ = host_b.create_endpoint(theirs)
    host_a.dp.fail_vnis = {VNI_MIN}
    with pytest.raises(DataplaneError):
        host_a.create_network("10.30.0.0/24")
    assert host_a.store.bindings("host-a") == {}
    assert host_a.store.left_networks("host-a") == set()
    assert host_a.store.get_network(theirs.docker_id).vni == VNI_MIN
    assert host_a.store.bindings("host-b") == {theirs.docker_id: theirs.docker_id}
    assert [e.endpoint_id for e in host_a.store.list_endpoints(theirs.docker_id)] == [endpoint_id]
    assert set(host_b.dp.networks) == {VNI_MIN}
    host_a.dp.fail_vnis = set()
    mine = host_a.create_network("10.30.0.0/24")
    assert host_a.cluster(mine).network_id == theirs.docker_id


def test_delete_network_when_last_removes_it_everywhere(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    host_a.network.delete_network(net.docker_id)
    with pytest.raises(NotFound):
        host_a.store.get_network(net.docker_id)
    assert host_a.store.bindings("host-a") == {} and host_a.store.left_networks("host-a") == set()
    assert host_a.dp.networks == {}
    host_a.network.delete_network(net.docker_id)  # resent: no error


def test_delete_network_still_used_elsewhere_leaves_it(host_a: Host, host_b: Host):
    theirs = host_b.create_network("10.30.0.0/24")
    host_b.create_endpoint(theirs)
    mine = host_a.create_network("10.30.0.0/24")
    host_a.network.delete_network(mine.docker_id)
    assert host_a.store.left_networks("host-a") == {theirs.docker_id}
    assert host_a.store.get_network(theirs.docker_id).vni == VNI_MIN
    assert host_a.store.bindings("host-a") == {}
    assert host_a.store.bindings("host-b") == {theirs.docker_id: theirs.docker_id}
    assert host_a.dp.networks == {} and set(host_b.dp.networks) == {VNI_MIN}
    again = host_a.create_network("10.30.0.0/24")  # back on it: the mark goes
    assert host_a.cluster(again).network_id == theirs.docker_id
    assert host_a.store.left_networks("host-a") == set()


# -- endpoints ------------------------------------------------------------------------------------------


def test_create_endpoint_answers_the_mac_only_when_docker_gave_none(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    first, second = new_id(), new_id()
    answer = host_a.network.create_endpoint(endpoint_body(net.docker_id, first, "10.30.0.5/24"))
    assert answer == {"Interface": {"MacAddress": "02:42:0a:1e:00:05"}}  # from the address
    answer = host_a.network.create_endpoint(
        endpoint_body(net.docker_id, second, "10.30.0.6/24", "02:AA:00:00:00:01")
    )
    assert answer == {"Interface": {}}
    record = host_a.store.get_endpoint(second)
    assert (record.network_id, record.host_id, record.vtep) == (net.docker_id, "host-a", "192.0.2.1")
    assert (record.mac, record.address) == ("02:aa:00:00:00:01", "10.30.0.6/24")
    assert host_a.dp.endpoints[first] == (VNI_MIN, "02:42:0a:1e:00:05", 1450)
    assert host_a.dp.endpoints[second] == (VNI_MIN, "02:aa:00:00:00:01", 1450)


def test_the_same_address_gets_the_same_mac_on_every_host_and_every_reuse(host_a: Host, host_b: Host):
    theirs = host_b.create_network("10.30.0.0/24")
    mine = host_a.create_network("10.30.0.0/24")
    first, cidr, mac = host_a.create_endpoint(mine)
    host_a.delete_endpoint(mine, first)
    host_a.ipam.release_address(ReleaseAddressRequest.parse({"PoolID": mine.pool_id, "Address": cidr}))
    with host_a.answering():  # the address is in host a's block: host b asks host a for it
        _, _, again = host_b.create_endpoint(theirs, address=cidr.split("/")[0])  # --ip on another host
    assert again == mac == mac_for_address(ipaddress.IPv4Interface(cidr))


def test_an_endpoint_without_ipv4_gets_a_mac_from_its_id(make_host):
    host = make_host("solo", "192.0.2.9", embedded=True)  # Docker's IPAM: an endpoint may have no address
    body = network_body(new_id(), "172.29.0.0/16", "172.29.0.1/16", space="LocalDefault")
    host.network.create_network(CreateNetworkRequest.parse(body))
    endpoint_id = new_id()
    answer = host.network.create_endpoint(endpoint_body(body["NetworkID"], endpoint_id, ""))
    assert answer == {"Interface": {"MacAddress": mac_for(endpoint_id)}}


def test_the_address_of_an_endpoint_is_owned_by_its_mac(host_a: Host):
    # Docker sends the IPAM no MAC; CreateEndpoint hands the address to the MAC (forget_host and Docker
    # sync's clean-up look it up by MAC), the derived one or one the user set
    net = host_a.create_network("10.30.0.0/24")
    _, derived_cidr, derived = host_a.create_endpoint(net)
    _, user_cidr, user = host_a.create_endpoint(net, mac="02:aa:00:00:00:07")
    owners = host_a.store.list_addresses(net.pool_id)
    assert owners[derived_cidr.split("/")[0]] == derived and owners[user_cidr.split("/")[0]] == user


def test_resent_create_endpoint_gives_the_same_answer(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    endpoint_id = new_id()
    request = endpoint_body(net.docker_id, endpoint_id, "10.30.0.5/24")
    answers = [host_a.network.create_endpoint(request) for _ in range(2)]
    assert answers[0] == answers[1] == {"Interface": {"MacAddress": "02:42:0a:1e:00:05"}}
    assert [e.endpoint_id for e in host_a.store.list_endpoints()] == [endpoint_id]


def test_same_endpoint_id_with_other_settings_is_refused(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    endpoint_id, address, mac = host_a.create_endpoint(net)
    with pytest.raises(BadRequest, match="exists with other settings"):
        host_a.network.create_endpoint(endpoint_body(net.docker_id, endpoint_id, "10.30.0.99/24", mac))
    assert host_a.store.get_endpoint(endpoint_id).address == address
    assert host_a.dp.endpoints[endpoint_id][1] == mac


@pytest.mark.parametrize(
    "docker_id, address, error, message",
    [
        ("mine", "10.99.0.5/24", BadRequest, "not in network [0-9a-f]{12}'s subnet 10.30.0.0/24"),
        ("mine", "", BadRequest, "has no IPv4 address"),
        ("unknown", "10.30.0.5/24", UnknownObject, "not a pyoverlay network"),
    ],
)
def test_bad_endpoint_is_refused_and_leaves_nothing(host_a: Host, docker_id, address, error, message):
    net = host_a.create_network("10.30.0.0/24")
    request = endpoint_body(net.docker_id if docker_id == "mine" else new_id(), new_id(), address)
    with pytest.raises(error, match=message):
        host_a.network.create_endpoint(request)
    assert host_a.store.list_endpoints() == [] and host_a.dp.endpoints == {}


def test_kernel_failure_on_create_endpoint_undoes_the_record(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    host_a.dp.delete_network(VNI_MIN)  # the devices vanished (a reboot) and cannot be built again
    host_a.dp.fail_vnis = {VNI_MIN}
    with pytest.raises(DataplaneError, match="injected"):
        host_a.network.create_endpoint(endpoint_body(net.docker_id, new_id(), "10.30.0.5/24"))
    assert host_a.store.list_endpoints() == [] and host_a.dp.endpoints == {}


def test_delete_endpoint_removes_record_and_veth_and_is_idempotent(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    endpoint_id, _, _ = host_a.create_endpoint(net)
    host_a.delete_endpoint(net, endpoint_id)
    host_a.delete_endpoint(net, endpoint_id)
    with pytest.raises(NotFound):
        host_a.store.get_endpoint(endpoint_id)
    assert host_a.dp.endpoints == {}
    assert [c for c in host_a.dp.calls if c[0] == "delete_endpoint"] == [("delete_endpoint", endpoint_id)] * 2


def test_join_answers_the_interface_name_and_oper_info_the_record(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    endpoint_id, address, mac = host_a.create_endpoint(net)
    answer = host_a.network.join(ids(net.docker_id, endpoint_id))
    assert answer == {"InterfaceName": {"SrcName": f"poc{endpoint_id[:12]}", "DstPrefix": "eth"}}
    info = host_a.network.oper_info(ids(net.docker_id, endpoint_id))["Value"]
    assert info == {"MacAddress": mac, "Address": address, "VTEP": "192.0.2.1", "Host": "host-a"}
    with pytest.raises(UnknownObject, match="not known to pyoverlay"):
        host_a.network.join(ids(net.docker_id, new_id()))


def test_join_announces_the_endpoint_and_a_failed_announcement_does_not_fail_it(host_a: Host, monkeypatch):
    net = host_a.create_network("10.30.0.0/24")
    endpoint_id, address, mac = host_a.create_endpoint(net)
    host_a.network.join(ids(net.docker_id, endpoint_id))
    assert host_a.dp.announced == [(VNI_MIN, address.split("/")[0], mac)]

    def broken(vni: int, ip: str, mac: str) -> None:
        raise DataplaneError(f"pobr{vni}: announce {ip} at {mac}: [errno 19] No such device")

    monkeypatch.setattr(host_a.dp, "announce", broken)
    answer = host_a.network.join(ids(net.docker_id, endpoint_id))  # resent by Docker: still answered
    assert answer == {"InterfaceName": {"SrcName": f"poc{endpoint_id[:12]}", "DstPrefix": "eth"}}
