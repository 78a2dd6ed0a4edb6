"""`pyoverlay expose` / `hide` through ExposureService, as the CLI runs them, and what the hosts' event
loops, Docker sync and NetworkService make of an exposure: the address on this host's bridge, a peer
on the others, never garbage, gone with a hide, with leaving and with the network."""

from __future__ import annotations

import ipaddress

import pytest

import plugin.docker_sync
from driver.peers import FLOOD_MAC
from kvstore import HOST_KIND, Conflict
from kvstore import Host as Registration
from kvstore.alloc import VNI_MIN
from plugin.errors import BadRequest, UnknownObject
from plugin.event_loop import HOSTS, EventLoop
from plugin.services.exposure import ExposureService, exposure_id
from plugin.services.network import mac_for_address

from .conftest import Host, Net
from .test_docker_sync import daemon_of

SUBNET = "10.30.0.0/24"


def exposing(host: Host) -> ExposureService:
    host.store.register_host(Registration(host.host_id, host.vtep))  # the agent's heartbeat
    return ExposureService(host.store, host.host_id)


def both_on_ov(host_a: Host, host_b: Host) -> tuple[Net, Net]:
    """B creates network "ov", A joins it (as A's Docker sync would), both loops have listed."""
    theirs = host_b.create_network(SUBNET)
    host_b.store.set_network_name(theirs.docker_id, "ov")
    mine = host_a.create_network(SUBNET)
    for host in (host_a, host_b):
        host.loop.relist()
        host.settle()
    return mine, theirs


def test_expose_puts_the_address_on_this_bridge_and_a_peer_on_the_others(host_a: Host, host_b: Host):
    _, theirs = both_on_ov(host_a, host_b)
    exposure = exposing(host_a).expose("ov")
    ip = exposure.address.split("/")[0]
    assert (
        exposure.address.endswith("/24")
        and exposure.kind == HOST_KIND
        and exposure.mac == mac_for_address(ipaddress.IPv4Interface(ip))
    )
    assert host_a.store.list_addresses(theirs.pool_id)[ip] == exposure.endpoint_id  # never a container's
    host_a.drain(lambda: host_a.dp.host_addresses.get(VNI_MIN) == (exposure.address, exposure.mac))
    assert host_a.dp.peers[VNI_MIN].fdb == frozenset()  # its own exposure is no remote peer
    host_b.drain(lambda: (ip, exposure.mac) in host_b.dp.peers[VNI_MIN].neigh)
    assert host_b.dp.peers[VNI_MIN].fdb == {(exposure.mac, host_a.vtep), (FLOOD_MAC, host_a.vtep)}
    assert host_b.dp.host_addresses == {}
    assert exposing(host_a).expose(theirs.docker_id[:12]) == exposure  # again, by id: the same, no write
    assert [item for item in host_a.settle() if item[1] != HOSTS] == []  # the heartbeat's write aside
    with pytest.raises(Conflict):
        exposing(host_a).expose("ov", address="10.30.0.200")


def test_a_restarted_loop_and_the_resync_put_the_address_back(host_a: Host, host_b: Host):
    both_on_ov(host_a, host_b)
    exposure = exposing(host_a).expose("ov")
    host_a.drain(lambda: VNI_MIN in host_a.dp.host_addresses)
    del host_a.dp.host_addresses[VNI_MIN]  # removed by hand
    host_a.loop.handle("resync", None, None)
    assert host_a.dp.host_addresses[VNI_MIN] == (exposure.address, exposure.mac)
    host_a.loop.close()
    host_a.dp.host_addresses.clear()  # a reboot: the agent starts on a bare kernel
    host_a.loop = EventLoop(host_a.store, host_a.dp, host_a.host_id, host_a.loop.ensure_devices)
    host_a.loop.relist()
    host_a.settle()
    assert host_a.dp.host_addresses[VNI_MIN] == (exposure.address, exposure.mac)


def test_hide_removes_it_everywhere_and_frees_the_address(host_a: Host, host_b: Host):
    _, theirs = both_on_ov(host_a, host_b)
    exposure = exposing(host_a).expose("ov")
    host_a.drain(lambda: VNI_MIN in host_a.dp.host_addresses)
    host_b.drain(lambda: bool(host_b.dp.peers[VNI_MIN].fdb))
    assert exposing(host_a).hide("ov") == exposure.address
    host_a.drain(lambda: host_a.dp.host_addresses == {})
    host_b.drain(lambda: host_b.dp.peers[VNI_MIN].fdb == frozenset())
    assert exposure.address.split("/")[0] not in host_a.store.list_addresses(theirs.pool_id)
    assert exposing(host_a).hide("ov") is None  # idempotent


def test_hide_frees_an_address_an_interrupted_expose_reserved(host_a: Host, host_b: Host):
    _, theirs = both_on_ov(host_a, host_b)
    owner = exposure_id(host_a.host_id, theirs.docker_id)
    ip = host_a.store.reserve_address(theirs.pool_id, owner, host_a.host_id)  # and then it stopped
    assert exposing(host_a).hide("ov") == f"{ip}/24"
    assert ip not in host_a.store.list_addresses(theirs.pool_id)


def test_docker_sync_never_collects_an_exposure(host_a: Host, host_b: Host, monkeypatch):
    mine, _ = both_on_ov(host_a, host_b)
    exposure = exposing(host_a).expose("ov")
    host_a.drain(lambda: exposure.endpoint_id in host_a.loop.view().endpoints)
    daemon_of(host_a).add(mine, "ov")
    monkeypatch.setattr(plugin.docker_sync, "STALE_SECONDS", 0.0)
    host_a.sync.sync_once()
    host_a.sync.sync_once()
    assert host_a.store.get_endpoint(exposure.endpoint_id) == exposure


def test_leaving_the_network_removes_the_exposure_and_its_address(host_a: Host, host_b: Host):
    mine, theirs = both_on_ov(host_a, host_b)
    host_b.create_endpoint(theirs)  # B's container keeps the network: A only leaves it
    exposure = exposing(host_a).expose("ov")
    host_b.drain(lambda: (exposure.mac, host_a.vtep) in host_b.dp.peers[VNI_MIN].fdb)
    host_a.network.delete_network(mine.docker_id)
    host_a.settle()
    assert host_a.dp.networks == {} and host_a.dp.host_addresses == {}
    assert exposure.address.split("/")[0] not in host_a.store.list_addresses(theirs.pool_id)
    host_b.drain(lambda: (exposure.mac, host_a.vtep) not in host_b.dp.peers[VNI_MIN].fdb)


def test_a_network_removed_elsewhere_takes_the_exposure_with_it(host_a: Host, host_b: Host):
    _, theirs = both_on_ov(host_a, host_b)
    exposure = exposing(host_a).expose("ov")
    host_a.drain(lambda: VNI_MIN in host_a.dp.host_addresses)
    host_b.network.delete_network(theirs.docker_id)  # an exposure keeps no network: deleted
    host_a.drain(lambda: host_a.dp.networks == {} and host_a.dp.host_addresses == {})
    assert exposure.endpoint_id not in {e.endpoint_id for e in host_a.store.list_endpoints()}


def test_clear_errors(host_a: Host, host_b: Host, make_host):
    both_on_ov(host_a, host_b)
    with pytest.raises(BadRequest, match="is not running"):
        ExposureService(host_a.store, host_a.host_id).expose("ov")  # no registration: no VTEP known
    with pytest.raises(UnknownObject, match="no pyoverlay network 'nope'"):
        exposing(host_a).expose("nope")
    host_c = make_host("host-c", "192.0.2.3")
    with pytest.raises(BadRequest, match="network ov is not on this host"):
        exposing(host_c).expose("ov")
    assert host_a.store.list_endpoints() == []
