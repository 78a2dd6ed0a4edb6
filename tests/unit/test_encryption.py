"""The pure parts of encrypted networks: tunnel addresses, the tunnel's peers, the sealed filter's members,
and how `-o encrypted` is read."""

from __future__ import annotations

import ipaddress

import pytest

from kvstore import Endpoint, Host, Network
from plugin.encryption import TUNNEL_PREFIX, tunnel_address, tunnel_peers
from plugin.errors import BadRequest
from plugin.guards import sealed_members
from plugin.messages import _check_driver_options


def endpoint(endpoint_id: str, network_id: str, host: str) -> Endpoint:
    return Endpoint(
        endpoint_id, network_id, host, f"192.0.2.{ord(host[-1])}", "02:42:0a:00:00:02", "10.0.0.2/24"
    )


SEALED = Network("sealed", 100, options={"encrypted": "true"})
PLAIN = Network("plain", 101)
NETWORKS = {"sealed": SEALED, "plain": PLAIN}
HOSTS = {h: Host(h, f"192.0.2.{ord(h[-1])}", public_key=f"key-{h}=", tunnel_port=51820) for h in "abcd"}


def test_tunnel_addresses_are_in_the_prefix_and_differ_per_host():
    addresses = {tunnel_address(f"{i:016x}") for i in range(1000)}
    assert len(addresses) == 1000
    assert all(ipaddress.IPv6Address(a) in TUNNEL_PREFIX for a in addresses)
    assert tunnel_address("a") == tunnel_address("a") != tunnel_address("b")


def test_peers_are_the_other_hosts_with_endpoints_in_encrypted_networks_bound_here():
    endpoints = {
        "sealed": {"1": endpoint("1", "sealed", "a"), "2": endpoint("2", "sealed", "b")},
        "plain": {"3": endpoint("3", "plain", "c")},  # plain: no tunnel to c
    }
    peers = tunnel_peers("a", NETWORKS, endpoints, HOSTS)
    assert list(peers) == ["key-b="]
    assert peers["key-b="].endpoint == "192.0.2.98:51820"
    assert list(peers["key-b="].allowed_ips) == [f"{tunnel_address('b')}/128"]


def test_a_host_with_no_endpoint_in_an_encrypted_network_has_no_peer():
    """It has the network bound (Docker made it there) but the members do not peer with it."""
    endpoints = {
        "sealed": {"1": endpoint("1", "sealed", "b"), "2": endpoint("2", "sealed", "c")},
        "plain": {"3": endpoint("3", "plain", "a")},
    }
    assert tunnel_peers("a", NETWORKS, endpoints, HOSTS) == {}
    assert list(tunnel_peers("b", NETWORKS, endpoints, HOSTS)) == ["key-c="]


def test_peers_are_per_network_two_hosts_in_different_encrypted_networks_do_not_peer():
    """a is in sealed with b and in other with c; b and c share no encrypted network, so no tunnel."""
    other = Network("other", 102, options={"encrypted": "true"})
    networks = {**NETWORKS, "other": other}
    endpoints = {
        "sealed": {"1": endpoint("1", "sealed", "a"), "2": endpoint("2", "sealed", "b")},
        "other": {"3": endpoint("3", "other", "a"), "4": endpoint("4", "other", "c")},
        "plain": {"5": endpoint("5", "plain", "b"), "6": endpoint("6", "plain", "c")},
    }
    assert sorted(tunnel_peers("a", networks, endpoints, HOSTS)) == ["key-b=", "key-c="]
    assert list(tunnel_peers("b", networks, endpoints, HOSTS)) == ["key-a="]
    assert list(tunnel_peers("c", networks, endpoints, HOSTS)) == ["key-a="]


def test_a_member_without_a_published_key_gets_no_peer():
    endpoints = {
        "sealed": {
            "1": endpoint("1", "sealed", "b"),
            "2": endpoint("2", "sealed", "d"),
            "3": endpoint("3", "sealed", "a"),
        }
    }
    hosts = {**HOSTS, "d": Host("d", "192.0.2.100")}  # an agent from before encryption
    assert list(tunnel_peers("a", NETWORKS, endpoints, hosts)) == ["key-b="]
    assert tunnel_peers("a", NETWORKS, endpoints, {}) == {}  # not registered (lease lapsed): none


def test_sealed_members_are_per_network_and_none_without_an_encrypted_network():
    other = Network("other", 102, options={"encrypted": "true"})
    endpoints = {
        "sealed": {"1": endpoint("1", "sealed", "a"), "2": endpoint("2", "sealed", "b")},
        "other": {"3": endpoint("3", "other", "c")},
        "plain": {"4": endpoint("4", "plain", "d")},
    }
    assert sealed_members("a", {**NETWORKS, "other": other}, endpoints) == {
        (tunnel_address("b"), 100),
        (tunnel_address("c"), 102),
    }
    assert sealed_members("a", NETWORKS, {"plain": endpoints["plain"]}) is None
    assert sealed_members("a", NETWORKS, {"sealed": {}}) == set()


@pytest.mark.parametrize(("value", "encrypted"), [("", True), ("true", True), ("1", True), ("false", False)])
def test_encrypted_is_docker_overlays_flag_or_a_boolean(value: str, encrypted: bool):
    generic = {"encrypted": value}
    _check_driver_options(generic)
    assert Network("n", 1, options=generic).encrypted is encrypted


def test_encrypted_with_another_value_is_refused():
    with pytest.raises(BadRequest, match="-o encrypted=yes please: the value must be true or false"):
        _check_driver_options({"encrypted": "yes please"})
