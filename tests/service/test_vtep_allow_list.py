"""T10's control side: the event loop keeps the VXLAN allow-list (a MemoryDataplane's vteps) in step with
the registered hosts and the hosts of remote endpoints, and drops it with the last network."""

from __future__ import annotations

from kvstore import Host as HostRecord

from .conftest import VXLAN_PORT, Host


def test_the_allow_list_follows_hosts_and_endpoints_and_goes_with_the_last_network(
    host_a: Host, host_b: Host
):
    mine = host_a.create_network("10.30.0.0/24")
    host_a.loop.relist()
    host_a.settle()
    assert host_a.dp.vteps.allowed() == set() and host_a.dp.vteps.port == VXLAN_PORT  # nobody registered
    theirs = host_b.create_network("10.30.0.0/24")
    host_b.create_endpoint(theirs)  # B's endpoint: its VTEP is allowed even before B registers
    host_a.drain(lambda: host_a.dp.vteps.allowed() == {host_b.vtep})
    host_a.store.register_host(HostRecord("host-c", "192.0.2.3"), ttl=60)
    host_a.drain(lambda: host_a.dp.vteps.allowed() == {host_b.vtep, "192.0.2.3"})
    host_a.store.forget_host("host-c")
    host_a.drain(lambda: host_a.dp.vteps.allowed() == {host_b.vtep})
    host_a.store.forget_host("host-b")  # its endpoint goes with it
    host_a.drain(lambda: host_a.dp.vteps.allowed() == set())
    host_a.network.delete_network(mine.docker_id)
    host_a.drain(lambda: host_a.dp.vteps.allowed() is None)


def test_a_filter_left_by_an_earlier_run_is_removed_on_resync(host_a: Host):
    host_a.dp.vteps.allow({"192.0.2.9"}, VXLAN_PORT)  # no network bound here
    host_a.loop.relist()
    host_a.settle()
    host_a.loop.handle("resync", None, None)
    assert host_a.dp.vteps.allowed() is None


def test_a_heartbeat_that_changes_nothing_touches_neither_the_allow_list_nor_the_tunnel(host_a: Host):
    """Each heartbeat rewrites the host's record; only a record that changed makes the loop look again."""
    host_a.create_network("10.30.0.0/24")
    host_a.loop.relist()
    host_a.settle()
    looks: list[str] = []
    host_a.loop.guard_vteps = lambda force=False: looks.append("vteps")
    host_a.loop.follow_tunnel = lambda force=False: looks.append("tunnel")
    record = HostRecord("host-c", "192.0.2.3", public_key="key-c=", tunnel_port=51820)
    host_a.store.register_host(record, ttl=60)
    host_a.settle()
    assert looks == ["vteps", "tunnel"]
    for _ in range(3):  # heartbeats
        host_a.store.register_host(record, ttl=60)
    assert host_a.settle() and looks == ["vteps", "tunnel"]
    assert host_a.loop.applied_revision == host_a.store.revision()  # the loop still keeps up
    rotated = HostRecord("host-c", "192.0.2.3", public_key="new=", tunnel_port=51820)
    host_a.store.register_host(rotated, ttl=60)
    host_a.settle()
    assert looks == ["vteps", "tunnel"] * 2  # a rotated key is followed
