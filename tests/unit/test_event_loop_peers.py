from driver.peers import Peer, desired_state
from kvstore import Endpoint
from plugin.endpoint_rules import remote_peers


def ep(eid, host, net="n1", address="10.0.0.2/24", vtep="192.0.2.2", mac="02:00:00:00:00:02"):
    return Endpoint(endpoint_id=eid, network_id=net, host_id=host, vtep=vtep, mac=mac, address=address)


def test_remote_peers_skip_local_endpoints():
    endpoints = {
        "a": ep("a", "me", vtep="192.0.2.1"),
        "b": ep("b", "other", mac="02:00:00:00:00:0b", address="10.0.0.11/24"),
        "d": ep("d", "third", vtep="192.0.2.3", mac="02:00:00:00:00:0d", address=None),
    }
    peers = remote_peers("me", endpoints)
    assert sorted(peers, key=lambda p: p.mac) == [
        Peer(mac="02:00:00:00:00:0b", ip="10.0.0.11", vtep="192.0.2.2"),
        Peer(mac="02:00:00:00:00:0d", ip=None, vtep="192.0.2.3"),
    ]
    state = desired_state(peers, {p.vtep for p in peers})
    assert ("00:00:00:00:00:00", "192.0.2.2") in state.fdb and ("00:00:00:00:00:00", "192.0.2.3") in state.fdb
    assert state.neigh == frozenset({("10.0.0.11", "02:00:00:00:00:0b")})


def test_no_remote_endpoints_means_no_entries():
    assert remote_peers("me", {"a": ep("a", "me")}) == []
