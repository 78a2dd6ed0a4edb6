"""Control-plane scale on one real etcd: simulated hosts (store clients and host loops with an in-memory
dataplane, not dockerds) over a cluster of networks and endpoints, for the code before the scoped-watch
redesign (``--baseline``, a checkout of it) and the code in this tree, side by side in one run.

    .venv/bin/python -m benchmarks.scale [--hosts 100 --networks 50 --endpoints 10000 --joined 5]
        [--baseline /tmp/pyoverlay-before] [--populate-with new|old] [--relists 30] [--idle-seconds 30]

Figures, per version, each measured in its own interpreter (benchmarks/scale_host.py; the simulated
cluster's ids, populating and key counting are in benchmarks/scale_cluster.py):
- a host's full relist+diff (list, program the dataplane; host joined to --joined networks), p50/p99;
- events the host's watches deliver when an endpoint appears in a network it has not joined (must be 0)
  and in one it has, and how long until the new peer is in its dataplane;
- Watch-stream messages etcd receives per minute from one idle host's loop (grpc_server_msg_received_total);
- the host process's RSS with the whole cluster in etcd;
- etcd keys and bytes per endpoint: the whole cluster's, and what one more endpoint adds.
The cluster is written once, through the store API of --populate-with; the key layout is the same in both.
If the old code fails as it is (its full snapshot outgrows gRPC's 4 MiB receive limit at 10,000
endpoints), the reason is printed and the "old*" column is the old code with that client limit raised.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.scale_cluster import Cluster, count_keys, topology_arguments
from tests.etcd_server import EtcdServer

TREE = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().with_name("scale_host.py")

# (result key, label, scale applied to the child's figure, decimals)
FIGURES = [
    ("relist_p50_ms", "relist+diff p50, ms", 1, 1),
    ("relist_p99_ms", "relist+diff p99, ms", 1, 1),
    ("relist_cold_ms", "first relist (empty dataplane), ms", 1, 1),
    ("relist_peers", "peers programmed by the relist", 1, 0),
    ("events_not_joined", "events: endpoint in a network not joined (must be 0)", 1, 0),
    ("events_joined", "events: endpoint in a joined network", 1, 0),
    ("probe_to_dataplane_ms", "endpoint put -> peer in dataplane, ms (1 sample)", 1, 1),
    ("idle_watch_msgs_per_min", "Watch msgs to etcd per minute, idle host", 1, 1),
    ("idle_events", "events during the idle window", 1, 0),
    ("rss_VmRSS", "host process RSS, MiB", 1 / 1024, 1),
    ("rss_VmHWM", "host process peak RSS, MiB", 1 / 1024, 1),
    ("probe_keys", "etcd keys added per endpoint", 1, 1),
    ("probe_key_bytes", "etcd key bytes added per endpoint", 1, 0),
    ("probe_value_bytes", "etcd value bytes added per endpoint", 1, 0),
]


def run_child(tree: Path, role: str, etcd: str, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """scale_host.py in a fresh interpreter with ``tree`` first on the path; its JSON, or {"error"}."""
    command = [sys.executable, str(CHILD), role, f"--etcd={etcd}", *extra]
    command += [f"--{name}={getattr(args, name)}" for name in ("hosts", "networks", "endpoints", "joined")]
    command += [
        f"--threads={args.threads}",
        f"--relists={args.relists}",
        f"--idle-seconds={args.idle_seconds}",
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # stderr passes through: the loops' own warnings belong in the output
    done = subprocess.run(command, env=env, cwd=tree, stdout=subprocess.PIPE, text=True, timeout=900)
    if done.returncode != 0:
        return {"error": f"exit status {done.returncode} (see above)"}
    results = json.loads(done.stdout.strip().splitlines()[-1])
    if "tree" in results and Path(results["tree"]) != tree.resolve():
        return {"error": f"imported {results['tree']}, not {tree}"}
    return results


def cell(results: dict[str, Any] | None, key: str, scale: float, decimals: int) -> tuple[str, float | None]:
    if results is None:
        return "not run", None
    if "error" in results:
        return "failed", None
    value = results.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a", None
    value *= scale
    return f"{value:,.{decimals}f}", value


def ratio(old: float | None, new: float | None) -> str:
    if old is None or new is None:
        return "-"
    if old == 0:
        return "=" if new == 0 else "inf"
    return f"{new / old:.3g}"


def print_table(old: dict[str, Any] | None, new: dict[str, Any], old_name: str) -> None:
    width = max(len(label) for _, label, _, _ in FIGURES)
    print(f"\n{'figure':<{width}}  {old_name:>12}  {'new':>12}  {'new/' + old_name:>8}")
    print("-" * (width + 40))
    for key, label, scale, decimals in FIGURES:
        old_text, old_value = cell(old, key, scale, decimals)
        new_text, new_value = cell(new, key, scale, decimals)
        print(f"{label:<{width}}  {old_text:>12}  {new_text:>12}  {ratio(old_value, new_value):>8}")
    for name, results in ((old_name, old), ("new", new)):
        if results is not None and "error" in results:
            print(f"{name}: {results['error']}")


def measure_old(
    baseline: Path, etcd: str, args: argparse.Namespace
) -> tuple[dict[str, Any], str, str | None]:
    """The old code's figures, its column name, and why it failed as it is (then "old*" is patched)."""
    print("measuring old ...", flush=True)
    old = run_child(baseline, "measure", etcd, args)
    if "error" not in old or not args.old_receive_limit_mib:
        return old, "old", None
    print(f"old failed: {old['error']}")
    limit = f"--receive-limit-mib={args.old_receive_limit_mib}"
    print(f"measuring old* (old code, its etcd client run with {limit}) ...", flush=True)
    return run_child(baseline, "measure", etcd, args, limit), "old*", old["error"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    topology_arguments(parser)
    parser.add_argument("--baseline", default="/tmp/pyoverlay-before", help="checkout of the old code")
    parser.add_argument("--populate-with", choices=("new", "old"), default="new")
    parser.add_argument("--threads", type=int, default=16, help="populating threads")
    parser.add_argument("--relists", type=int, default=30, help="timed relists per version")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument(
        "--old-receive-limit-mib",
        type=int,
        default=64,
        help="if the old code fails, run it again with its etcd client's gRPC receive limit raised to this",
    )
    args = parser.parse_args()
    cluster = Cluster(args.hosts, args.networks, args.endpoints, args.joined)
    cluster.check()
    baseline = Path(args.baseline).resolve()
    if not (baseline / "kvstore").is_dir():
        print(f"baseline: not run ({baseline} has no kvstore/)")
        baseline = None
    if args.populate_with == "old" and baseline is None:
        sys.exit("--populate-with old needs --baseline")
    versions = f"new={TREE}" + (f", old={baseline}" if baseline else "")
    print(
        f"{args.hosts} hosts, {args.networks} networks, {args.endpoints:,} endpoints, {args.joined} per host"
    )
    print(f"code: {versions}; {os.cpu_count()} CPUs")
    started = time.monotonic()
    with EtcdServer() as etcd:
        print(f"etcd {etcd.etcdctl('version').split()[2]} at {etcd.endpoint}", flush=True)
        populated = run_child(
            TREE if args.populate_with == "new" else baseline, "populate", etcd.endpoint, args
        )
        if "error" in populated:
            sys.exit(f"populating failed: {populated['error']}")
        print(
            f"populated with the {args.populate_with} code: networks and bindings "
            f"{populated['networks_seconds']:.1f} s, endpoints {populated['endpoints_seconds']:.1f} s "
            f"({args.endpoints / populated['endpoints_seconds']:,.0f}/s)"
        )
        keys = count_keys(etcd.endpoint)
        per = {k: v / args.endpoints for k, v in keys.items()}
        print(
            f"etcd under /pyoverlay/v1/: {keys['keys']:,} keys, {keys['key_bytes']:,} key bytes, "
            f"{keys['value_bytes']:,} value bytes; per endpoint: {per['keys']:.2f} keys, "
            f"{per['key_bytes']:.0f} key bytes, {per['value_bytes']:.0f} value bytes",
            flush=True,
        )
        old, old_name, old_failure = None, "old", None
        if baseline is not None:
            old, old_name, old_failure = measure_old(baseline, etcd.endpoint, args)
        print("measuring new ...", flush=True)
        new = run_child(TREE, "measure", etcd.endpoint, args)
    for name, results in ((old_name, old), ("new", new)):
        if results is not None and "loop" in results:
            print(f"{name}: {results['loop']} from {results['tree']}")
    print_table(old, new, old_name)
    if old_failure:
        print(
            f"old* is the old code with its etcd client's gRPC receive limit raised to "
            f"{args.old_receive_limit_mib} MiB; as it is, it fails: {old_failure}"
        )
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
