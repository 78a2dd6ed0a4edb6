"""The block keeper's upkeep (kvstore/host_upkeep.py) on a host wired as the agent wires it: copies and a
spare block for each network bound here, and addresses no endpoint holds freed after a while."""

from __future__ import annotations

from kvstore import host_upkeep

from .conftest import Host
from .test_ipam_service import address, release


def test_the_keeper_copies_bound_networks_and_keeps_a_spare_block(host_a: Host):
    net = host_a.create_network("10.30.0.0/24")
    host = host_a.ipam.host
    host.keep()
    assert host.offline.get("networks/" + net.docker_id)["network_id"] == host_a.cluster(net).network_id
    held = host.blocks.held(net.pool_id)
    # the first block holds the subnet's network address and the gateway: a second one is the spare
    assert sorted(held) == ["10.30.0.0/28", "10.30.0.16/28"]
    host.keep()
    assert len(host.blocks.held(net.pool_id)) == 2  # enough now: nothing more claimed


def test_an_address_no_endpoint_holds_is_freed_after_a_while(host_a: Host, monkeypatch):
    net = host_a.create_network("10.30.0.0/24")
    orphan = address(host_a, net.pool_id).split("/")[0]  # RequestAddress whose CreateEndpoint never came
    _, kept, _ = host_a.create_endpoint(net)
    host = host_a.ipam.host
    host.keep()
    assert orphan in host_a.store.list_addresses(net.pool_id)  # young: Docker may still send it
    monkeypatch.setattr(host_upkeep, "ORPHAN_AFTER", 0.0)
    host.keep()
    assert set(host_a.store.list_addresses(net.pool_id)) == {"10.30.0.1", kept.split("/")[0]}
    assert host.blocks.owner_of(net.pool_id, orphan) is None  # free to hand out again


def test_another_hosts_orphans_are_its_own_business(host_a: Host, host_b: Host, monkeypatch):
    theirs = host_b.create_network("10.30.0.0/24")
    mine = host_a.create_network("10.30.0.0/24")
    orphan = address(host_b, theirs.pool_id).split("/")[0]
    monkeypatch.setattr(host_upkeep, "ORPHAN_AFTER", 0.0)
    host_a.ipam.host.keep()
    host_a.ipam.host.keep()
    assert orphan in host_a.store.list_addresses(mine.pool_id)


def test_an_address_granted_to_another_host_and_released_there_can_be_granted_again(
    host_a: Host, host_b: Host
):
    theirs = host_b.create_network("10.30.0.0/24")
    mine = host_a.create_network("10.30.0.0/24")
    host_a.ipam.host.keep()  # host a holds 10.30.0.0/28 and 10.30.0.16/28
    for again in range(2):
        with host_a.answering():  # host a grants 10.30.0.20 to host b's --ip, twice over
            endpoint_id, cidr, _ = host_b.create_endpoint(theirs, address="10.30.0.20")
        assert cidr == "10.30.0.20/24", again
        host_b.delete_endpoint(theirs, endpoint_id)
        release(host_b, theirs.pool_id, "10.30.0.20")
    _, cidr, _ = host_a.create_endpoint(mine, address="10.30.0.20")  # and its own --ip there
    assert cidr == "10.30.0.20/24"
