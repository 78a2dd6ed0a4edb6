"""Where the plugin's time goes on the hot path of `docker run`, one host, no dockerd:

    sudo .venv/bin/python -m benchmarks.hot_path [--rounds 200]

A throwaway network namespace with the real Dataplane, the embedded store on disk (as an agent has it),
and the Flask app, sent the requests dockerd sends for one container's life (RequestAddress, CreateEndpoint,
Join, Leave, DeleteEndpoint, ReleaseAddress) as dockerd sends them. Per request type: p50/p99 of the whole
handler, and per call the store round trips (get/range/txn), netlink requests (by command), subprocesses
and raw frames sent, with the time spent in each. "then, reaper" is DeleteEndpoint's deferred veth
deletion, waited for after the answer: its p50 is what was left to wait, its netlink line the deletion.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

import driver.announce
import driver.firewall
import driver.sockets
from driver import Dataplane
from kvstore import Store
from kvstore.kv_sqlite import SqliteKV
from plugin.app import create_app
from plugin.services.ipam import IpamService
from plugin.services.network import NetworkService

CALLS: dict[str, list[float]] = defaultdict(list)  # what -> durations within the current request
HOT_PATH = ("RequestAddress", "CreateEndpoint", "Join", "Leave", "DeleteEndpoint", "ReleaseAddress")
DEFERRED = "  then, reaper"  # DeleteEndpoint's veth deletion, on its own thread: the wait for it after


def counted(name: Callable[..., str], call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            CALLS[name(*args, **kwargs)].append(time.perf_counter() - start)

    return wrapper


def instrument(kv: SqliteKV) -> None:
    for method in ("get", "range", "txn"):
        setattr(kv, method, counted(lambda *a, m=method, **k: f"store {m}", getattr(kv, method)))
    get = driver.sockets.NetlinkSockets.get
    driver.sockets.NetlinkSockets.get = lambda self, *a, **k: _TimedIPRoute(get(self, *a, **k))  # type: ignore[method-assign]
    driver.firewall._run = counted(lambda *a, **k: "subprocess iptables", driver.firewall._run)
    sender = driver.sockets.PacketSockets
    sender.send = counted(lambda *a, **k: "raw frame (GARP)", sender.send)  # type: ignore[method-assign]


class _TimedIPRoute:
    """Times the netlink requests the Dataplane makes, by method and command ("link dump")."""

    def __init__(self, ipr: IPRoute) -> None:
        self._ipr = ipr

    def __getattr__(self, method: str) -> Any:
        call = getattr(self._ipr, method)
        if method not in ("link", "fdb", "neigh", "addr", "route", "link_lookup"):
            return call
        label = f"netlink {method}" + (" {}" if method != "link_lookup" else "")
        return counted(lambda cmd="", *a, **k: label.format(cmd), call)


@contextmanager
def throwaway_netns() -> Iterator[str]:
    name = f"pyohot-{uuid.uuid4().hex[:8]}"
    pyroute2_netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield name
    finally:
        # the Dataplane keeps each network in a namespace <name>-<vni> beside it
        for other in pyroute2_netns.listnetns():
            if other == name or other.startswith(f"{name}-"):
                pyroute2_netns.remove(other)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with throwaway_netns() as ns, tempfile.TemporaryDirectory() as state, Dataplane(netns=ns) as dp:
        kv = SqliteKV(state)
        store = Store(kv)
        host = "hot-path-host"
        network = NetworkService(store, dp, host, "192.0.2.1", 1500, 4789, embedded=True)
        ipam = IpamService(store, host, "10.200.0.0/13", 24)
        client = create_app(network, ipam).test_client()

        def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
            answer = client.post("/" + path, data=json.dumps(body))
            assert answer.status_code == 200, (path, answer.get_json(force=True))
            return answer.get_json(force=True)

        pool = call("IpamDriver.RequestPool", {"AddressSpace": "pyoverlay", "Pool": "10.77.0.0/24"})["PoolID"]
        gateway = call(
            "IpamDriver.RequestAddress",
            {"PoolID": pool, "Options": {"RequestAddressType": "com.docker.network.gateway"}},
        )["Address"]
        network_id = uuid.uuid4().hex * 2
        call(
            "NetworkDriver.CreateNetwork",
            {
                "NetworkID": network_id,
                "IPv4Data": [{"AddressSpace": "pyoverlay", "Pool": pool, "Gateway": gateway}],
            },
        )
        instrument(kv)
        totals: dict[str, list[float]] = defaultdict(list)
        parts: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

        def timed(kind: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
            CALLS.clear()
            start = time.perf_counter()
            answer = call(path, body)
            totals[kind].append(time.perf_counter() - start)
            for what, durations in CALLS.items():
                parts[kind][what].append(sum(durations))
                parts[kind][what + " #"].append(len(durations))
            return answer

        for _ in range(args.rounds):
            address = timed("RequestAddress", "IpamDriver.RequestAddress", {"PoolID": pool, "Options": {}})
            ids = {"NetworkID": network_id, "EndpointID": uuid.uuid4().hex * 2}
            timed("CreateEndpoint", "NetworkDriver.CreateEndpoint", {**ids, "Interface": address})
            timed("Join", "NetworkDriver.Join", {**ids, "SandboxKey": "/x"})
            timed("Leave", "NetworkDriver.Leave", ids)
            timed("DeleteEndpoint", "NetworkDriver.DeleteEndpoint", ids)
            # what DeleteEndpoint left to the reaper's thread, waited for here as the next docker run
            # (hundreds of ms later) would find it done
            CALLS.clear()
            start = time.perf_counter()
            dp.settle(30)
            totals[DEFERRED].append(time.perf_counter() - start)
            for what, durations in CALLS.items():
                parts[DEFERRED][what].append(sum(durations))
                parts[DEFERRED][what + " #"].append(len(durations))
            bare = address["Address"].split("/")[0]
            timed("ReleaseAddress", "IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": bare})
        print(f"{args.rounds} rounds, embedded store on disk, real netlink in a throwaway namespace")
        for kind in (*HOT_PATH[:5], DEFERRED, *HOT_PATH[5:]):
            values = totals[kind]
            print(f"{kind:<16} p50 {pct(values, 0.5) * 1000:7.2f} ms  p99 {pct(values, 0.99) * 1000:7.2f} ms")
            for what in sorted(w for w in parts[kind] if not w.endswith(" #")):
                n = sum(parts[kind][what + " #"]) / len(values)
                ms = sum(parts[kind][what]) / len(values) * 1000
                print(f"    {what:<28} {n:5.1f} per call  {ms:7.2f} ms mean")
        kv.close()


if __name__ == "__main__":
    main()
