"""The event loop of host A, driven by hand, with host B writing to the same store: what A's kernel
(a MemoryDataplane) holds for B's endpoints, and which scopes A watches."""

from __future__ import annotations

from driver import PeerState
from driver.peers import FLOOD_MAC
from kvstore import StoreUnavailable
from kvstore.alloc import VNI_MIN
from plugin.event_loop import BINDINGS, CLAIMS, ENDPOINTS, HOSTS, NETWORKS
from plugin.messages import ReleaseAddressRequest

from .conftest import Host, Net


def expected(host: Host, *endpoints: tuple[str, str, str]) -> PeerState:
    """What a VXLAN device elsewhere holds for these endpoints of ``host``: (id, address, mac) each."""
    if not endpoints:
        return PeerState()
    fdb = {(mac, host.vtep) for _, _, mac in endpoints} | {(FLOOD_MAC, host.vtep)}
    neigh = {(address.split("/")[0], mac) for _, address, mac in endpoints}
    return PeerState(fdb=frozenset(fdb), neigh=frozenset(neigh))


def joined(host_a: Host, host_b: Host) -> tuple[Net, Net]:
    """B creates a network, A joins it (as A's Docker sync would), A's loop has listed: (A's, B's)."""
    theirs = host_b.create_network("10.30.0.0/24")
    mine = host_a.create_network("10.30.0.0/24")
    host_a.loop.relist()
    host_a.settle()
    return mine, theirs


def test_remote_endpoints_become_fdb_and_neighbour_entries_and_go_again(host_a: Host, host_b: Host):
    mine = host_a.create_network("10.30.0.0/24")
    host_a.loop.relist()
    host_a.create_endpoint(mine)  # A's own endpoint: a veth, never an FDB entry
    theirs = host_b.create_network("10.30.0.0/24")
    first, second = host_b.create_endpoint(theirs), host_b.create_endpoint(theirs)
    host_a.drain(lambda: host_a.dp.peers[VNI_MIN] == expected(host_b, first, second))
    host_b.delete_endpoint(theirs, first[0])
    host_a.drain(lambda: host_a.dp.peers[VNI_MIN] == expected(host_b, second))
    host_b.delete_endpoint(theirs, second[0])
    host_a.drain(lambda: host_a.dp.peers[VNI_MIN] == PeerState())
    assert host_a.settle() == [] and host_a.dp.peers[VNI_MIN] == PeerState()


def test_no_events_for_a_network_this_host_has_not_joined(host_a: Host, host_b: Host):
    theirs = host_b.create_network("10.30.0.0/24")
    host_a.loop.relist()
    host_a.settle()
    for _ in range(3):
        host_b.create_endpoint(theirs)
    assert host_a.settle(quiet=0.5) == []
    assert host_a.loop.queue.qsize() == 0
    assert set(host_a.loop._watches) == {NETWORKS, BINDINGS, HOSTS, CLAIMS}
    assert host_a.loop.endpoints == {} and host_a.dp.peers == {} and host_a.dp.networks == {}
    assert theirs.docker_id in host_a.loop.view().networks  # the network list is watched


def test_joining_starts_the_scope_and_programs_existing_peers(host_a: Host, host_b: Host):
    theirs = host_b.create_network("10.30.0.0/24")
    host_a.loop.relist()
    peers = [host_b.create_endpoint(theirs) for _ in range(2)]
    host_a.settle()
    host_a.create_network("10.30.0.0/24")
    host_a.drain(lambda: host_a.dp.peers.get(VNI_MIN) == expected(host_b, *peers))
    assert ENDPOINTS + theirs.docker_id in host_a.loop._watches
    later = host_b.create_endpoint(theirs)
    host_a.drain(lambda: host_a.dp.peers[VNI_MIN] == expected(host_b, *peers, later))


def test_leaving_stops_the_scope_and_removes_the_devices(host_a: Host, host_b: Host):
    mine, theirs = joined(host_a, host_b)
    host_b.create_endpoint(theirs)
    host_a.drain(lambda: bool(host_a.dp.peers.get(VNI_MIN, PeerState()).fdb))
    host_a.network.delete_network(mine.docker_id)
    host_a.settle()
    assert set(host_a.loop._watches) == {NETWORKS, BINDINGS, HOSTS, CLAIMS}
    assert host_a.loop.endpoints == {} and host_a.dp.networks == {} and host_a.dp.peers == {}
    host_b.create_endpoint(theirs)
    assert host_a.settle(quiet=0.5) == []
    assert set(host_b.dp.networks) == {VNI_MIN}


def test_resync_repairs_entries_changed_by_hand(host_a: Host, host_b: Host):
    _, theirs = joined(host_a, host_b)
    peer = host_b.create_endpoint(theirs)
    host_a.drain(lambda: host_a.dp.peers[VNI_MIN] == expected(host_b, peer))
    stray = ("02:00:00:00:00:ff", "192.0.2.99")
    programmed = host_a.dp.peers[VNI_MIN]
    host_a.dp.peers[VNI_MIN] = PeerState(
        fdb=(programmed.fdb - {(peer[2], host_b.vtep)}) | {stray}, neigh=frozenset()
    )
    host_a.loop.handle("resync", None, None)
    assert host_a.dp.peers[VNI_MIN] == expected(host_b, peer)
    host_a.dp.delete_network(VNI_MIN)  # the devices went (by hand): resync builds them again
    host_a.loop.handle("resync", None, None)
    assert host_a.dp.networks[VNI_MIN]["local_ip"] == host_a.vtep
    assert host_a.dp.peers[VNI_MIN] == expected(host_b, peer)


def test_a_failed_endpoint_watch_is_listed_again_and_followed(host_a: Host, host_b: Host):
    _, theirs = joined(host_a, host_b)
    scope = ENDPOINTS + theirs.docker_id
    generation, watch = host_a.loop._watches[scope]
    calls = list(host_a.dp.calls)
    host_a.loop.handle("watch", scope, (generation - 1, StoreUnavailable("old")))  # a cancelled watch's
    assert host_a.loop._watches[scope] == (generation, watch) and host_a.dp.calls == calls
    watch.cancel()  # the watch ended: what happens next is missed, until the scope is listed again
    missed = host_b.create_endpoint(theirs)
    assert host_a.settle(quiet=0.5) == [] and host_a.dp.peers[VNI_MIN] == PeerState()
    host_a.loop.queue.put(("watch", scope, (generation, StoreUnavailable("x"))))
    host_a.settle()
    assert host_a.dp.peers[VNI_MIN] == expected(host_b, missed)
    assert host_a.loop._watches[scope][0] > generation
    later = host_b.create_endpoint(theirs)
    host_a.drain(lambda: host_a.dp.peers[VNI_MIN] == expected(host_b, missed, later))


def test_a_failed_network_watch_is_listed_again(host_a: Host, host_b: Host):
    host_a.loop.relist()
    generation, watch = host_a.loop._watches[NETWORKS]
    watch.cancel()
    missed = host_b.create_network("10.31.0.0/24")
    assert host_a.settle(quiet=0.5) == [] and host_a.loop.view().networks == {}
    host_a.loop.queue.put(("watch", NETWORKS, (generation, StoreUnavailable("x"))))
    host_a.settle()
    assert set(host_a.loop.view().networks) == {missed.docker_id}
    later = host_b.create_network("10.32.0.0/24")
    host_a.drain(lambda: set(host_a.loop.view().networks) == {missed.docker_id, later.docker_id})


def test_a_network_removed_while_the_network_watch_was_down_is_left_on_relisting(host_a: Host, host_b: Host):
    _, theirs = joined(host_a, host_b)
    generation, watch = host_a.loop._watches[NETWORKS]
    watch.cancel()
    host_b.network.delete_network(theirs.docker_id)  # A misses the delete event
    assert host_a.settle(quiet=0.5) == []
    host_a.loop.queue.put(("watch", NETWORKS, (generation, StoreUnavailable("x"))))
    host_a.settle()
    assert theirs.docker_id not in host_a.loop.view().networks
    assert set(host_a.loop._watches) == {NETWORKS, BINDINGS, HOSTS, CLAIMS}  # its endpoint scope stopped
    assert host_a.dp.networks == {}  # as when the delete event arrives


def test_a_network_removed_on_another_host_removes_this_hosts_devices(host_a: Host, host_b: Host):
    mine, theirs = joined(host_a, host_b)
    assert set(host_a.dp.networks) == {VNI_MIN}
    host_b.network.delete_network(theirs.docker_id)  # A has no endpoint in it: the network goes
    host_a.drain(lambda: host_a.dp.networks == {})
    assert host_a.loop.endpoints == {} and ENDPOINTS + theirs.docker_id not in host_a.loop._watches
    assert host_a.store.bindings("host-a") == {mine.docker_id: theirs.docker_id}  # until A's daemon drops it
    host_a.network.delete_network(mine.docker_id)
    assert host_a.store.bindings("host-a") == {}


def test_relist_removes_devices_no_bound_network_wants(host_a: Host):
    host_a.create_network("10.30.0.0/24")
    host_a.dp.ensure_network(5000, 1450, host_a.vtep)  # left over from before a restart
    host_a.loop.relist()
    assert set(host_a.dp.networks) == {VNI_MIN}
    assert ("delete_network", 5000) in host_a.dp.calls


def test_view_shows_every_network_this_hosts_bindings_and_own_endpoints(host_a: Host, host_b: Host):
    mine, theirs = joined(host_a, host_b)
    own = host_a.create_endpoint(mine)
    host_b.create_endpoint(theirs)
    other = host_b.create_network("10.31.0.0/24")
    host_a.settle()
    view = host_a.loop.view()
    assert set(view.networks) == {theirs.docker_id, other.docker_id}
    assert view.bindings == {mine.docker_id: theirs.docker_id}
    assert set(view.endpoints) == {own[0]}
    assert view.endpoints[own[0]].mac == own[2]


def test_a_remote_endpoint_is_announced_when_it_appears_or_changes_mac_not_when_listed(
    host_a: Host, host_b: Host
):
    theirs = host_b.create_network("10.30.0.0/24")
    listed = host_b.create_endpoint(theirs)
    mine = host_a.create_network("10.30.0.0/24")
    host_a.loop.relist()
    host_a.settle()
    assert host_a.dp.peers[VNI_MIN] == expected(host_b, listed)
    assert host_a.dp.announced == []  # a listing announces nothing: no stampede at start-up
    host_a.create_endpoint(mine)  # A's own: announced by its Join, never by the loop
    appeared = host_b.create_endpoint(theirs)
    host_a.drain(lambda: host_a.dp.peers[VNI_MIN] == expected(host_b, listed, appeared))
    ip = appeared[1].split("/")[0]
    assert host_a.dp.announced == [(VNI_MIN, ip, appeared[2])]
    # programmed before announced: a neighbour's first unicast to the MAC must find the VTEP
    calls = [name for name, _ in host_a.dp.calls]
    assert calls.index("announce") > len(calls) - 1 - calls[::-1].index("apply_peers")
    # the same IP comes back with a MAC the user set: the new mapping is announced
    host_b.delete_endpoint(theirs, appeared[0])
    host_b.ipam.release_address(ReleaseAddressRequest.parse({"PoolID": theirs.pool_id, "Address": ip}))
    replaced = host_b.create_endpoint(theirs, mac="02:aa:00:00:00:05", address=ip)
    host_a.drain(lambda: len(host_a.dp.announced) == 2)
    assert host_a.dp.announced[1] == (VNI_MIN, ip, "02:aa:00:00:00:05")
    assert host_a.dp.peers[VNI_MIN] == expected(host_b, listed, replaced)
    assert host_a.settle() == [] and len(host_a.dp.announced) == 2


def test_own_container_endpoints_cost_the_kernel_nothing(host_a: Host, host_b: Host):
    mine, theirs = joined(host_a, host_b)
    reads = host_a.dp.peer_reads
    endpoint_id, _, _ = host_a.create_endpoint(mine)
    host_a.drain(lambda: endpoint_id in host_a.loop.view().endpoints)
    host_a.delete_endpoint(mine, endpoint_id)
    host_a.drain(lambda: endpoint_id not in host_a.loop.view().endpoints)
    assert host_a.dp.peer_reads == reads  # a veth of this host: never an FDB or neighbour entry
    appeared = host_b.create_endpoint(theirs)
    host_a.drain(lambda: host_a.dp.peers[VNI_MIN] == expected(host_b, appeared))
    assert host_a.dp.peer_reads > reads
