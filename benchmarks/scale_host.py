"""One simulated host of benchmarks.scale, in its own interpreter per code version: the old and the new tree
both have top-level ``kvstore``, ``plugin`` and ``driver``. Run by file path with PYTHONPATH set to the tree
under test (its directory, benchmarks/, is then first on the path); prints one JSON object on stdout.

    PYTHONPATH=<tree> python benchmarks/scale_host.py populate --etcd URL [topology]
    PYTHONPATH=<tree> python benchmarks/scale_host.py measure --etcd URL [topology] [--relists 30]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from scale_cluster import Cluster, count_keys, hex_id, mac_for, populate, topology_arguments

MEMORY_DATAPLANE = Path(__file__).resolve().parents[1] / "tests" / "memory_dataplane.py"
MEASURED_HOST = 0


def watch_messages_received(etcd: str) -> float:
    """etcd's count of messages clients sent on Watch streams (create, cancel, progress requests)."""
    with urllib.request.urlopen(f"{etcd}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_msg_received_total{") and 'grpc_method="Watch"' in line
    )


def memory_kib() -> dict[str, int]:
    status = Path("/proc/self/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


# -- one simulated host ----------------------------------------------------------------------------
class CountingStore:
    """The host's store, counting every event its watches deliver: the old cluster-wide iterator
    (``watch``) and the new scoped sinks (``watch_networks``/``_bindings``/``_endpoints``)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.events = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name.startswith("watch_"):  # watch_networks, watch_bindings, watch_endpoints: (..., sink)
            return lambda *args, **kwargs: self._counted(method, args, kwargs)
        return method

    def _count(self, n: int) -> None:
        with self._lock:
            self.events += n

    def watch(self, start_revision: int, timeout: float | None = None) -> Any:
        with contextlib.closing(self._store.watch(start_revision, timeout)) as events:
            for event in events:
                self._count(1)
                yield event

    def _counted(self, method: Any, args: tuple, kwargs: dict) -> Any:
        if "sink" in kwargs:
            kwargs["sink"] = self._counting(kwargs["sink"])
        else:
            args = (*args[:-1], self._counting(args[-1]))
        return method(*args, **kwargs)

    def _counting(self, sink: Any) -> Any:
        def counting(batch: Any) -> None:
            if isinstance(batch, list):  # else the exception that ended the watch
                self._count(len(batch))
            sink(batch)

        return counting


class HostLoop:
    """The tree's host loop: plugin.event_loop.EventLoop where it exists, else plugin.reconciler."""

    def __init__(self, store: Any, dataplane: Any, host_id: str, vtep: str) -> None:
        def ensure_devices(network: Any) -> None:
            dataplane.ensure_network(network.vni, 1450, vtep)

        kwargs = {"ensure_devices": ensure_devices, "on_network_event": lambda network_id, network: None}
        if importlib.util.find_spec("plugin.event_loop") is not None:
            from plugin.event_loop import EventLoop

            self.loop = EventLoop(store, dataplane, host_id, **kwargs)
        else:
            from plugin.reconciler import Reconciler

            self.loop = Reconciler(store, dataplane, host_id, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop.run, args=(self._stop,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the running loop, or cancel the watches a bare relist started (the new loop only)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            return
        for name in ("close", "stop"):
            if hasattr(self.loop, name):
                getattr(self.loop, name)()
                return


def load_memory_dataplane() -> Any:
    spec = importlib.util.spec_from_file_location("memory_dataplane", MEMORY_DATAPLANE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MemoryDataplane


def programmed_macs(dataplane: Any) -> set[str]:
    return {mac for vni in dataplane.network_vnis() for mac, _ in dataplane.read_peers(vni).fdb}


def wait_for(condition: Any, timeout: float) -> float | None:
    """Seconds until ``condition()`` held, or None if it did not within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.002)
    return None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_relists(cluster: Cluster, store: Any, dataplane_class: Any, relists: int) -> dict[str, Any]:
    """Relist a fresh loop of the measured host: once on an empty dataplane (cold), then ``relists``
    times on the programmed one (the resync or reconnect case: list, diff, nothing to change)."""
    me = MEASURED_HOST
    dataplane = dataplane_class()
    seconds = []
    for _ in range(relists + 1):
        loop = HostLoop(store, dataplane, cluster.host_id(me), cluster.vtep(me))
        started = time.perf_counter()
        loop.loop.relist()
        seconds.append(time.perf_counter() - started)
        loop.close()  # the new loop's relist starts watches
    warm = seconds[1:]
    return {
        "loop": type(loop.loop).__module__ + "." + type(loop.loop).__name__,
        "relist_cold_ms": seconds[0] * 1000,
        "relist_p50_ms": statistics.median(warm) * 1000,
        "relist_p99_ms": pct(warm, 0.99) * 1000,
        "relist_peers": len(programmed_macs(dataplane)),
    }


def put_probe(cluster: Cluster, writer: Any, n: int, k: int) -> tuple[str, str, str, float]:
    """An endpoint of another host appearing in network n; (endpoint id, pool id, address, when put)."""
    from kvstore import Endpoint

    i = next((i for i in cluster.hosts_of(n) if i != MEASURED_HOST), cluster.hosts - 1)
    endpoint_id, mac, pool_id = hex_id("probe", k), mac_for(0xFF000000 + k), cluster.subnet(n)
    host_id, network_id = cluster.host_id(i), cluster.network_id(n)
    address = writer.reserve_address(pool_id, mac, host_id)
    record = Endpoint(endpoint_id, network_id, host_id, cluster.vtep(i), mac, f"{address}/24", f"probe-{k}")
    started = time.monotonic()
    writer.put_endpoint(record)
    return endpoint_id, pool_id, address, started


def events_and_idle(cluster: Cluster, etcd: str, store: CountingStore, writer: Any, idle: float) -> dict:
    """Run the measured host's loop; count the events it receives for an endpoint appearing in a network
    it has not joined and in one it has; then sample etcd's Watch messages over an idle window."""
    me = MEASURED_HOST
    mine = cluster.joined_by(me)
    other = next(n for n in range(cluster.networks) if n not in mine)
    remote = set()
    for e in range(cluster.endpoints):
        _, n, i, mac = cluster.endpoint(e)
        if n in mine and i != me:
            remote.add(mac)
    dataplane = load_memory_dataplane()()
    loop = HostLoop(store, dataplane, cluster.host_id(me), cluster.vtep(me))
    loop.start()
    results: dict[str, Any] = {}
    probes = []
    try:
        ready = wait_for(lambda: remote <= programmed_macs(dataplane), timeout=120)
        if ready is None:
            raise RuntimeError("the host loop did not program its networks' peers within 120 s")
        results["start_to_programmed_s"] = ready
        time.sleep(1.0)
        before = store.events
        probes.append(put_probe(cluster, writer, other, 1))
        time.sleep(2.0)
        results["events_not_joined"] = store.events - before
        before = store.events
        probes.append(put_probe(cluster, writer, mine[0], 2))
        if wait_for(lambda: mac_for(0xFF000002) in programmed_macs(dataplane), timeout=30) is not None:
            results["probe_to_dataplane_ms"] = 1000 * (time.monotonic() - probes[-1][3])
        time.sleep(2.0)
        results["events_joined"] = store.events - before
        time.sleep(1.0)
        events, messages = store.events, watch_messages_received(etcd)
        started = time.monotonic()
        time.sleep(idle)
        elapsed = time.monotonic() - started
        results["idle_watch_msgs_per_min"] = (watch_messages_received(etcd) - messages) * 60 / elapsed
        results["idle_events"] = store.events - events
        results.update({f"rss_{k}": v for k, v in memory_kib().items()})
    finally:
        loop.close()
        remove_probes(writer, probes)
    return results


def keys_per_endpoint(cluster: Cluster, etcd: str, writer: Any) -> dict[str, float]:
    """What two more endpoints add under /pyoverlay/v1/, halved. After the loop's figures: reading the
    whole keyspace here would make this process's peak RSS the size of the cluster."""
    before = count_keys(etcd)
    network = cluster.joined_by(MEASURED_HOST)[0]
    probes = [put_probe(cluster, writer, network, k) for k in (3, 4)]
    after = count_keys(etcd)
    remove_probes(writer, probes)
    return {f"probe_{k}": (after[k] - before[k]) / len(probes) for k in after}


def remove_probes(writer: Any, probes: list[tuple[str, str, str, float]]) -> None:
    """Leave the cluster as populated, for the next version's child."""
    for endpoint_id, pool_id, address, _ in probes:
        writer.delete_endpoint(endpoint_id)
        writer.release_address(pool_id, address)


def measure(cluster: Cluster, etcd: str, relists: int, idle: float, receive_limit_mib: int) -> dict[str, Any]:
    import kvstore
    from kvstore import open_store

    if receive_limit_mib:  # a patched run, for a version that cannot read its lists under gRPC's 4 MiB
        from kvstore import etcd_conn

        etcd_conn._GRPC_OPTIONS.append(("grpc.max_receive_message_length", receive_limit_mib << 20))
    state_dir = tempfile.TemporaryDirectory(prefix="pyoverlay-scale-")  # unused with etcd
    store = CountingStore(open_store([etcd], state_dir.name))
    writer = open_store([etcd], state_dir.name)  # another host's client
    results: dict[str, Any] = {"tree": str(Path(kvstore.__file__).resolve().parents[1])}
    try:
        results.update(time_relists(cluster, store, load_memory_dataplane(), relists))
        results.update(events_and_idle(cluster, etcd, store, writer, idle))
        results.update(keys_per_endpoint(cluster, etcd, writer))
    except Exception as exc:  # a version that cannot run a phase: say why, keep what it measured
        results["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()
        store.close()
        state_dir.cleanup()
    return results


def import_only_from_pythonpath() -> None:
    """Drop the editable install's finders: they would fill modules missing from the tree under test
    (plugin.event_loop in the old tree) from the checkout the venv was installed from."""
    editable = [f for f in sys.meta_path if getattr(f, "__module__", "").startswith("__editable__")]
    for finder in editable:
        sys.meta_path.remove(finder)
    sys.path_hooks[:] = [
        h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")
    ]


def main() -> None:
    import_only_from_pythonpath()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("populate", "measure"))
    parser.add_argument("--etcd", required=True)
    topology_arguments(parser)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--relists", type=int, default=30)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--receive-limit-mib", type=int, default=0, help="raise the etcd client's limit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cluster = Cluster(args.hosts, args.networks, args.endpoints, args.joined)
    cluster.check()
    if args.role == "populate":
        results = populate(cluster, args.etcd, args.threads)
    else:
        results = measure(cluster, args.etcd, args.relists, args.idle_seconds, args.receive_limit_mib)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
