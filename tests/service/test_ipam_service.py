"""IpamService over one store shared by two hosts: the same pools, gateways and addresses everywhere."""

from __future__ import annotations

import ipaddress

import pytest

from kvstore import REQUEST_OWNER_PREFIX, Conflict, InvalidRequest, NotFound, StoreUnavailable
from plugin.errors import BadRequest, ConflictError
from plugin.messages import ReleaseAddressRequest, RequestAddressRequest, RequestPoolRequest

from .conftest import DEFAULT_POOL, GATEWAY, MAC_OPTION, Host


def pool(host: Host, subnet: str = "", ip_range: str = "", space: str = "pyoverlay", v6: bool = False):
    body = {"AddressSpace": space, "Pool": subnet, "SubPool": ip_range, "V6": v6}
    return host.ipam.request_pool(RequestPoolRequest.parse(body))


def address(
    host: Host, pool_id: str, mac: str | None = None, wanted: str | None = None, gateway=False
) -> str:
    options = dict(GATEWAY) if gateway else ({MAC_OPTION: mac} if mac else {})
    body = {"PoolID": pool_id, "Options": options, **({"Address": wanted} if wanted else {})}
    return host.ipam.request_address(RequestAddressRequest.parse(body))["Address"]


def release(host: Host, pool_id: str, bare: str) -> None:
    host.ipam.release_address(ReleaseAddressRequest.parse({"PoolID": pool_id, "Address": bare}))


def test_same_subnet_gives_the_same_pool_and_gateway_on_every_host(host_a: Host, host_b: Host):
    on_a, on_b = pool(host_a, "10.30.0.0/24"), pool(host_b, "10.30.0.0/24")
    assert on_a == on_b == {"PoolID": "10.30.0.0/24", "Pool": "10.30.0.0/24", "Data": {}}
    assert host_a.store.get_pool("10.30.0.0/24").holders == ("host-a", "host-b")
    pool_id = on_a["PoolID"]
    assert address(host_a, pool_id, gateway=True) == address(host_b, pool_id, gateway=True) == "10.30.0.1/24"
    assert host_a.store.list_addresses(pool_id) == {"10.30.0.1": "gateway"}


def test_address_by_mac_is_idempotent_across_hosts(host_a: Host, host_b: Host):
    pool_id = pool(host_a, "10.30.0.0/24")["PoolID"]
    pool(host_b, "10.30.0.0/24")
    address(host_a, pool_id, gateway=True)
    first = address(host_a, pool_id, "02:00:00:00:00:01")
    assert address(host_a, pool_id, "02:00:00:00:00:01") == first  # Docker resent it
    second = address(host_b, pool_id, "02:00:00:00:00:02")
    # each host hands out addresses of its own block (a /28: the pool's blocks, 10.30.0.0/28 first)
    assert (first, second) == ("10.30.0.2/24", "10.30.0.16/24")
    assert host_a.store.list_addresses(pool_id) == {
        "10.30.0.1": "gateway",
        "10.30.0.2": "02:00:00:00:00:01",
        "10.30.0.16": "02:00:00:00:00:02",
    }


def test_release_frees_the_address_but_not_the_gateway(host_a: Host):
    pool_id = pool(host_a, "10.30.0.0/24")["PoolID"]
    address(host_a, pool_id, gateway=True)
    taken = address(host_a, pool_id, "02:00:00:00:00:01")
    release(host_a, pool_id, taken.split("/")[0])
    release(host_a, pool_id, taken.split("/")[0])  # resent: no-op
    release(host_a, pool_id, "10.30.0.1")
    assert host_a.store.list_addresses(pool_id) == {"10.30.0.1": "gateway"}
    assert address(host_a, pool_id, "02:00:00:00:00:09", wanted=taken.split("/")[0]) == taken


def test_explicit_addresses_and_ip_ranges(host_a: Host):
    pool_id = pool(host_a, "10.30.0.0/24", "10.30.0.128/28")["PoolID"]
    assert host_a.store.get_pool(pool_id).ip_range == "10.30.0.128/28"
    # dynamic addresses come from the range: its first address is a host address of the subnet
    assert address(host_a, pool_id, "02:00:00:00:00:01") == "10.30.0.128/24"
    assert address(host_a, pool_id, "02:00:00:00:00:02", wanted="10.30.0.50") == "10.30.0.50/24"
    with pytest.raises(Conflict, match="10.30.0.50"):
        address(host_a, pool_id, "02:00:00:00:00:03", wanted="10.30.0.50")
    assert address(host_a, pool_id, wanted="10.30.0.60") == "10.30.0.60/24"  # --aux-address: no MAC
    assert host_a.store.list_addresses(pool_id)["10.30.0.60"].startswith(REQUEST_OWNER_PREFIX)


def test_a_second_network_on_the_same_subnet_is_refused_on_one_host(host_a: Host, host_b: Host):
    net = host_a.create_network("10.30.0.0/24")
    with pytest.raises(ConflictError, match=f"already used by network {net.docker_id[:12]}"):
        pool(host_a, "10.30.0.0/24")
    assert pool(host_b, "10.30.0.0/24")["PoolID"] == net.pool_id  # another host joins it
    assert host_a.store.get_pool(net.pool_id).holders == ("host-a", "host-b")


def test_default_pools_are_carved_from_the_default_range_without_overlap(host_a: Host, host_b: Host):
    subnets = [pool(host, "")["Pool"] for host in (host_a, host_b, host_a)]
    nets = [ipaddress.IPv4Network(s) for s in subnets]
    assert len(set(subnets)) == 3
    assert all(n.prefixlen == 24 and n.subnet_of(ipaddress.IPv4Network(DEFAULT_POOL)) for n in nets)


def test_released_by_every_holder_the_pool_goes_with_its_addresses(host_a: Host, host_b: Host):
    pool_id = pool(host_a, "10.30.0.0/24")["PoolID"]
    pool(host_b, "10.30.0.0/24")
    address(host_a, pool_id, "02:00:00:00:00:01")
    host_a.ipam.release_pool(pool_id)
    assert host_a.store.get_pool(pool_id).holders == ("host-b",)
    host_b.ipam.release_pool(pool_id)
    with pytest.raises(NotFound):
        host_a.store.get_pool(pool_id)
    assert host_a.store.list_addresses(pool_id) == {}


BAD_POOLS = {
    "ipv6 subnet as ipv4": (dict(subnet="fd00::/64"), "Pool 'fd00::/64' is not an IPv4 subnet"),
    "ipv4 subnet as ipv6": (dict(subnet="10.1.0.0/24", v6=True), "Pool '10.1.0.0/24' is not an IPv6 subnet"),
    "ipv6 not a subnet": (dict(subnet="fd00::g/64", v6=True), "not a subnet in CIDR form"),
    "ipv6 range outside": (
        dict(subnet="fd00::/64", ip_range="fd01::/80", v6=True),
        "not inside subnet fd00::/64",
    ),
    "address space": (dict(space="other"), "unknown address space 'other'"),
    "host bits": (dict(subnet="10.1.0.7/24"), "host bits set; did you mean 10.1.0.0/24"),
    "not a subnet": (dict(subnet="10.1.0.0/40"), "not a subnet in CIDR form"),
    "range without subnet": (dict(ip_range="10.1.0.0/28"), "--ip-range needs --subnet"),
    "range outside": (dict(subnet="10.1.0.0/24", ip_range="10.2.0.0/28"), "not inside subnet 10.1.0.0/24"),
}


@pytest.mark.parametrize("kwargs, message", BAD_POOLS.values(), ids=BAD_POOLS.keys())
def test_bad_pool_request_is_refused_and_claims_nothing(host_a: Host, kwargs, message):
    with pytest.raises(BadRequest, match=message.replace("(", r"\(")):
        pool(host_a, **kwargs)
    assert host_a.store.list_pools() == []


def test_ipv6_pool_too_small_is_refused_by_the_store_and_claims_nothing(host_a: Host):
    # the store's InvalidRequest: the HTTP layer answers it as a bad request, as for IPv4's /31
    with pytest.raises(InvalidRequest, match="fd00::/127 is too small: pyoverlay needs at least a /126"):
        pool(host_a, subnet="fd00::/127", v6=True)
    assert host_a.store.list_pools() == []


def test_ipv6_pools_default_and_given_and_their_addresses(host_a: Host, host_b: Host):
    given = pool(host_a, "fd00:5::/64", v6=True)
    assert given == {"PoolID": "fd00:5::/64", "Pool": "fd00:5::/64", "Data": {}}
    assert pool(host_b, "fd00:5::/64", v6=True)["PoolID"] == given["PoolID"]  # same pool on every host
    first, second = pool(host_a, v6=True), pool(host_b, v6=True)
    assert first["Pool"] == "fd70:796f:7600::/64" and second["Pool"] == "fd70:796f:7600:1::/64"
    gateway = host_a.ipam.request_address(
        RequestAddressRequest.parse(
            {"PoolID": given["PoolID"], "Options": {"RequestAddressType": "com.docker.network.gateway"}}
        )
    )
    assert gateway["Address"] == "fd00:5::1/64"
    assert address(host_b, given["PoolID"]) == "fd00:5::2/64"
    assert address(host_a, given["PoolID"], wanted="fd00:5::99") == "fd00:5::99/64"
    host_a.ipam.release_address(
        ReleaseAddressRequest.parse({"PoolID": given["PoolID"], "Address": "fd00:5::99"})
    )
    assert set(host_a.store.list_addresses(given["PoolID"])) == {"fd00:5::1", "fd00:5::2"}


def test_without_a_mac_each_request_owns_its_address(host_a: Host, host_b: Host):
    # what Docker sends, as the IPAM does not require a MAC: no key, so nothing makes two requests one
    pool_id = pool(host_a, "10.30.0.0/24")["PoolID"]
    pool(host_b, "10.30.0.0/24")
    assert (address(host_a, pool_id), address(host_a, pool_id)) == ("10.30.0.1/24", "10.30.0.2/24")
    with pytest.raises(Conflict, match="10.30.0.2 is already in use"):
        address(host_b, pool_id, wanted="10.30.0.2")  # a second container with the same --ip
    owners = host_a.store.list_addresses(pool_id)
    assert len(set(owners.values())) == 2 and all(o.startswith(REQUEST_OWNER_PREFIX) for o in owners.values())
    with pytest.raises(NotFound, match="10.99.0.0/24"):
        address(host_a, "10.99.0.0/24")


def test_a_release_the_store_was_away_for_goes_through_when_it_is_back(host_a: Host, monkeypatch):
    # Docker ignores a failed ReleaseAddress: a release while etcd is away is journalled and published
    net = host_a.create_network("10.30.0.0/24")
    pool_id = net.pool_id
    unused = address(host_a, pool_id).split("/")[0]  # its CreateEndpoint failed
    gone_id, gone, _ = host_a.create_endpoint(net)  # its DeleteEndpoint went through, its release did not
    host_a.delete_endpoint(net, gone_id)
    _, kept, _ = host_a.create_endpoint(net)  # its DeleteEndpoint failed too: Docker sync frees it later
    gone, kept = gone.split("/")[0], kept.split("/")[0]
    store_release = host_a.store.release_address

    def away(*_: object, **__: object) -> None:
        raise StoreUnavailable("etcd at http://10.0.0.1:2379 is unreachable")

    monkeypatch.setattr(host_a.store, "release_address", away)
    for bare in (unused, gone, kept):
        release(host_a, pool_id, bare)  # answered: journalled
    journal = host_a.ipam.host.offline
    assert journal.pending == 3 and host_a.ipam.host.away
    with pytest.raises(StoreUnavailable):
        host_a.ipam.host.publish()  # still away: kept
    assert journal.pending == 3
    monkeypatch.setattr(host_a.store, "release_address", store_release)
    assert host_a.ipam.host.publish() == 3
    assert not host_a.ipam.host.away
    assert set(host_a.store.list_addresses(pool_id)) == {"10.30.0.1", kept}  # kept: its endpoint holds it
    assert host_a.ipam.host.publish() == 0  # done once
