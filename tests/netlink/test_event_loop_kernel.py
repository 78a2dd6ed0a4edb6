"""The event loop over the real kernel: a remote endpoint in the store becomes FDB and neighbour entries on
a real VXLAN device, and an entry deleted by hand comes back at the next resync (drift repair)."""

import subprocess

import pytest

from driver import Dataplane
from driver.names import vxlan_name
from kvstore import Endpoint, Network, Store
from kvstore.kv_sqlite import SqliteKV
from plugin.event_loop import EventLoop

from .nsutil import net_ns

pytestmark = pytest.mark.netlink

REMOTE = Endpoint("remote" + "ab" * 29, "net1", "host-b", "192.0.2.2", "02:42:0a:01:00:03", "10.1.0.3/24")


def fdb(ns: str, vni: int) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", net_ns(ns, vni), "bridge", "fdb", "show", "dev", vxlan_name(vni)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_remote_endpoint_is_programmed_and_drift_is_repaired(ns: str) -> None:
    store = Store(SqliteKV(None))
    network = store.create_network("host-a", "dockA", Network("net1", 0))
    store.create_network("host-b", "dockB", network)
    store.put_endpoint(REMOTE)
    with Dataplane(netns=ns) as dp:
        loop = EventLoop(
            store, dp, "host-a", ensure_devices=lambda n: dp.ensure_network(n.vni, 1450, "192.0.2.1")
        )
        try:
            loop.relist()
            assert f"{REMOTE.mac} dst 192.0.2.2" in fdb(ns, network.vni)
            assert ("10.1.0.3", REMOTE.mac) in dp.read_peers(network.vni).neigh
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    net_ns(ns, network.vni),
                    "bridge",
                    "fdb",
                    "del",
                    REMOTE.mac,
                    "dev",
                    vxlan_name(network.vni),
                    "dst",
                    "192.0.2.2",
                    "self",
                ],
                check=True,
            )
            assert REMOTE.mac not in fdb(ns, network.vni)  # drift, by hand
            loop.handle("resync", None, None)  # what the timer does every RESYNC_INTERVAL
            assert f"{REMOTE.mac} dst 192.0.2.2" in fdb(ns, network.vni)
        finally:
            loop.close()
            dp.delete_network(network.vni)
            store.close()
