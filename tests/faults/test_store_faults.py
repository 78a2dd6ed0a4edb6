"""The store under faults: etcd down, and a 3-member etcd without quorum (T6): what a host's own address
blocks serve (run, connect, rm on a network it has) succeeds and is journalled (issue 13); what needs the
store (a new network, a fixed address) fails with an error naming etcd and leaves nothing half made; the
journal is published and service is back within 5 s of etcd; compaction during churn (T7): watches cut
by it are listed again and the kernel ends as a fresh agent leaves it."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from plugin.docker_sync import STALE_SECONDS
from tests.lab.host import CommandFailed
from tests.lab.system import wait_until as wait_for
from tests.multihost.test_overlay import SLEEP, converge_ping, create_everywhere, ip_of, networks

from .conftest import count, report
from .leaks import ROOT, assert_no_leaks, store_items
from .outage import assert_unique, endpoint_ids, wait_published

pytestmark = [pytest.mark.lab, pytest.mark.faults]

RECOVERY_BOUND = 5.0  # seconds after etcd is back: the bound


def bindings_agree(lab) -> dict[str, tuple[list[str], list[str]]]:
    """Per host whose Docker networks and store bindings differ: (only in Docker, only in the store)."""
    items = store_items(lab, ROOT + "bindings/")
    differ = {}
    for h in lab.hosts:
        host_id = (h.workdir / "state" / "host-id").read_text().strip()
        bound = {k.rsplit("/", 1)[1] for k in items if k.startswith(f"{ROOT}bindings/{host_id}/")}
        docker = {n["Id"] for n in networks(h).values()}
        if bound != docker:
            differ[h.name] = (sorted(docker - bound), sorted(bound - docker))
    return differ


def outage(lab, stop: Callable[[], None], start: Callable[[], None], seconds: float) -> dict[str, object]:
    """Stop the store with ``stop``; send every kind of request on h1 while it is down; ``start`` it
    after ``seconds``; return the figures. What h1's own blocks serve (a run, a connect, an rm on a network
    it has) must succeed offline; what needs the store (a new network, a fixed address) must be refused
    naming etcd; after the restart the journal is published and the outage-born container reachable."""
    h1, h2 = lab.hosts
    create_everywhere(lab, "pre", "--subnet", "10.57.0.0/24")
    h1.create_network("spare", "--subnet", "10.58.0.0/24")
    h1.docker("run", "-d", "--name", "old", "--network", "pre", lab.image, *SLEEP)
    h1.docker("run", "-d", "--name", "old2", lab.image, *SLEEP)  # on the default bridge, to connect
    h2.docker("run", "-d", "--name", "peer", "--network", "pre", lab.image, *SLEEP)
    peer = ip_of(h2, "peer", "pre")
    converge_ping(h1, "old", peer)
    removed = endpoint_ids(h1, {"old"})

    stop()
    down_at = time.monotonic()
    fixed = ("--network", "pre", "--ip", "10.57.0.200", lab.image, *SLEEP)
    requests = {
        "network create": lambda: h1.create_network("during", "--subnet", "10.59.0.0/24", check=False),
        "run --ip": lambda: h1.docker("run", "-d", "--name", "fixed", *fixed, check=False),
        "run": lambda: h1.docker(
            "run", "-d", "--name", "during", "--network", "pre", lab.image, *SLEEP, check=False
        ),
        "network connect": lambda: h1.docker("network", "connect", "pre", "old2", check=False),
        "rm": lambda: h1.docker("rm", "-f", "old", check=False),
        "network rm": lambda: h1.docker("network", "rm", "spare", check=False),
    }
    answers, took = {}, {}
    for what, send in requests.items():
        started = time.monotonic()
        answers[what] = send()
        took[what] = round(time.monotonic() - started, 2)
    for what in ("network create", "run --ip"):  # Docker shows the plugin's error
        proc = answers[what]
        assert proc.returncode != 0 and "etcd" in proc.stderr, f"{what}: {proc.returncode} {proc.stderr}"
    for what in ("run", "network connect", "rm"):  # served from h1's own blocks, journalled
        proc = answers[what]
        assert proc.returncode == 0, f"{what} with etcd down: {proc.stderr}"
    h1.docker("rm", "-f", "fixed", check=False)  # created by Docker before its network attach failed
    born = endpoint_ids(h1, {"during", "old2"})
    time.sleep(max(0.0, down_at + seconds - time.monotonic()))

    start()
    back_at = time.monotonic()
    attempts = 0
    while True:  # a fixed address needs the store: the first one granted is the service back
        attempts += 1
        name = f"after{attempts}"
        proc = h1.docker("run", "-d", "--name", name, *fixed, check=False)
        if proc.returncode == 0:
            break
        assert "etcd" in proc.stderr, proc.stderr
        h1.docker("rm", "-f", name, check=False)
        assert time.monotonic() - back_at < 60, (
            f"no docker run --ip succeeded 60 s after etcd returned: {proc.stderr}"
        )
    recovery = time.monotonic() - back_at
    wait_published(lab, born, removed, 60)
    publish = time.monotonic() - back_at
    converge_ping(h2, "peer", ip_of(h1, "during", "pre"), timeout=60)
    traffic = time.monotonic() - back_at
    converge_ping(h2, "peer", ip_of(h1, f"after{attempts}", "pre"))

    # A network removed during the outage stays in the store until the agent's Docker sync has seen it
    # gone for STALE_SECONDS (a CreateNetwork in flight looks the same at first).
    caught_up = time.monotonic()
    assert_no_leaks(lab, timeout=STALE_SECONDS + 60)  # room for a listing that hangs once (30 s)

    def agree() -> bool:
        try:
            return not bindings_agree(lab)
        except CommandFailed:  # a network Docker sync removed between `network ls` and `inspect`
            return False

    try:  # the network removed offline goes from the store after Docker sync's grace (STALE_SECONDS)
        wait_for(agree, STALE_SECONDS + 30, "Docker's and the store's networks agree")
    except RuntimeError as exc:
        raise AssertionError(
            f"bindings differ (only in Docker, only in the store): {bindings_agree(lab)}"
        ) from exc
    caught_up = time.monotonic() - caught_up
    assert not [k for k in store_items(lab) if "10.59.0" in k]  # nothing of the refused network
    assert "during" not in networks(h1)
    assert_unique(lab)
    assert recovery <= RECOVERY_BOUND, f"first docker run --ip succeeded {recovery:.1f} s after etcd returned"
    return {
        "outage_s": seconds,
        "refused_naming_etcd": "network create, run --ip",
        "served_offline": "run, network connect, rm",
        "request_s": took,
        "recovery_s": round(recovery, 2),
        "runs_until_success": attempts,
        "publish_s": round(publish, 2),
        "traffic_s": round(traffic, 2),
        "store_caught_up_s": round(caught_up, 1),
        "leaks": 0,
    }


def test_etcd_down_own_blocks_serve_the_rest_is_refused_and_recovers(make_lab):
    seconds = count("t6_outage_s", 30, 10)
    lab = make_lab(2, etcd=True)
    lab.start_agents()
    figures = outage(lab, lambda: lab.stop_etcd(0), lambda: (lab.start_etcd(0), lab.wait_etcd()), seconds)
    report("T6", f"etcd (1 member) down {seconds} s", **figures)


def test_etcd_quorum_loss_behaves_like_etcd_down(make_lab):
    seconds = count("t6_outage_s", 30, 10)
    lab = make_lab(2, etcd=True, etcd_members=3)
    lab.start_agents()

    def stop() -> None:
        for member in (1, 2):
            lab.stop_etcd(member)

    def start() -> None:
        for member in (1, 2):
            lab.start_etcd(member)
        lab.wait_etcd()

    figures = outage(lab, stop, start, seconds)
    report("T6", f"etcd quorum lost: 2 of 3 members down {seconds} s", **figures)


# --- T7 -------------------------------------------------------------------------------------------


def kernel_view(h) -> dict[str, object]:
    """h's networks as the agent programs them, without what the kernel picks itself (ifindex, random
    MACs of bridges and VXLAN devices): links, VXLAN FDB entries with their dst, permanent neighbours."""
    view = {}
    for path in h.network_namespaces():

        def j(*cmd: str, path: str = path) -> list[dict]:
            out = h.run(["nsenter", f"--net={path}", *cmd]).stdout
            return json.loads(out) if out.strip() else []

        links = sorted(
            (
                link["ifname"],
                link.get("linkinfo", {}).get("info_kind", ""),
                link.get("mtu"),
                link.get("master", ""),
                "UP" in link.get("flags", []),
                link["address"] if link["ifname"].startswith("poh") else "",
            )
            for link in j("ip", "-j", "-d", "link", "show")
        )
        fdb = sorted(
            (e["mac"], e["ifname"], e["dst"]) for e in j("bridge", "-j", "fdb", "show") if "dst" in e
        )
        neigh = sorted(
            (n["dst"], n.get("lladdr", ""), n["dev"])
            for n in j("ip", "-j", "neigh", "show", "nud", "permanent")
        )
        view[path] = {"links": links, "fdb": fdb, "neigh": neigh}
    return view


def current_revision(lab) -> int:
    status = json.loads(lab.etcdctl("endpoint", "status", "-w", "json").stdout)
    return max(s["Status"]["header"]["revision"] for s in status)


def compact_now(lab) -> int | None:
    """Compact etcd at its current revision; None if that revision is compacted already."""
    revision = current_revision(lab)
    done = lab.etcdctl("compact", str(revision), check=False)
    if done.returncode != 0:
        assert "compacted" in done.stderr, done.stderr
        return None
    return revision


def test_compaction_during_churn_relists_and_ends_like_a_fresh_agent(make_lab):
    cycles = count("t7_cycles", 100, 12)
    lab = make_lab(2, etcd=True)
    # No periodic resync: only the watches and their relists may bring the kernel in line.
    env = {"RESYNC_INTERVAL": "3600"}
    lab.start_agents(extra_env=env)
    h1, h2 = lab.hosts
    create_everywhere(lab, "ch", "--subnet", "10.60.0.0/24")
    for h in lab.hosts:
        h.docker("run", "-d", "--name", f"k{h.name}", "--network", "ch", lab.image, *SLEEP)
    stop = threading.Event()
    compactions: list[int] = []

    def compact() -> None:
        while not stop.is_set():
            if revision := compact_now(lab):
                compactions.append(revision)
            time.sleep(0.1)

    def churn(h, n: int) -> None:
        for i in range(n):
            name = f"c{h.name}x{i}x{time.monotonic_ns() % 10**6}"
            h.docker("run", "-d", "--name", name, "--network", "ch", lab.image, *SLEEP)
            if i % 4:  # every fourth stays: the end state has something on every host
                h.docker("rm", "-f", name)

    compactor = threading.Thread(target=compact)
    compactor.start()
    try:
        churners = [threading.Thread(target=churn, args=(h, cycles)) for h in lab.hosts]
        for t in churners:
            t.start()
        for t in churners:
            t.join()
        # A stalled agent (SIGSTOP: a long pause) falls behind its watch while h1 churns and the
        # records are rewritten: etcd parks the watch, and compaction then cuts the history it needs.
        record = next(
            (k, v)
            for k, v in store_items(lab, ROOT + "topology/endpoints/").items()
            if v.get("container_name") == "kh1"
        )
        h2.kill_agent(signal.SIGSTOP, wait=False)
        try:
            churn(h1, 4)
            rewrites = flood(lab, record[0], json.dumps(record[1]))
            compact_now(lab)
        finally:
            h2.kill_agent(signal.SIGCONT, wait=False)
        churn(h2, 4)
    finally:
        stop.set()
        compactor.join()
    relists = {h.name: h.agent_log().count("compacted); listing it again") for h in lab.hosts}
    watch_lines = [line for line in h2.agent_log().splitlines() if "watch" in line or "compact" in line]
    assert relists["h2"] >= 1, watch_lines[-20:]
    assert_no_leaks(lab)

    dumps = {}
    for h in lab.hosts:
        converged = settle(h)
        h.stop_agent()
        h.start_agent(extra_env=env)
        fresh = settle(h)
        dumps[h.name] = (converged, fresh)
    for name, (converged, fresh) in dumps.items():
        assert converged == fresh, (
            f"{name}: kernel after churn differs from a fresh agent's: {converged} {fresh}"
        )
    report(
        "T7",
        f"{cycles} run(/rm) cycles per host on 2 hosts, etcd compacted every ~0.1 s, h2's agent stalled",
        compactions=len(compactions),
        stalled_watch_rewrites=rewrites,
        relists_after_compaction=relists,
        fdb_entries={n: sum(len(v["fdb"]) for v in d[0].values()) for n, d in dumps.items()},
        kernel_identical_to_fresh=True,
    )


def settle(h, quiet: float = 2.0, limit: float = 30.0) -> dict[str, object]:
    """h's kernel view once it has not changed for ``quiet`` seconds."""
    last, since, deadline = kernel_view(h), time.monotonic(), time.monotonic() + limit
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"{h.name}: kernel still changing after {limit} s"
        time.sleep(0.3)
        now = kernel_view(h)
        if now != last:
            last, since = now, time.monotonic()
    return last


FLOOD = r"""
import json, sys, time, urllib.request, etcd3
url, key, value, limit = sys.argv[1:]
host, port = url.rsplit("//", 1)[1].split(":")
client = etcd3.client(host=host, port=int(port))
padded = json.dumps({**json.loads(value), "pad": "x" * 64_000})  # a field no reader knows: ignored

def slow_watchers():
    for line in urllib.request.urlopen(url + "/metrics", timeout=5).read().decode().splitlines():
        if line.startswith("etcd_debugging_mvcc_slow_watcher_total "):
            return float(line.split()[1])
    return 0.0

puts = 0
while puts < int(limit):
    for _ in range(25):
        client.put(key, padded)
    puts += 25
    if slow_watchers() >= 1:
        time.sleep(0.5)  # a watcher that only lagged for a moment catches up; the stalled one cannot
        if slow_watchers() >= 1:
            break
client.put(key, value)
print(puts)
"""


def flood(lab, key: str, value: str, limit: int = 4000) -> int:
    """Rewrite ``key`` with its own record padded by an unknown field (64 KB) until etcd counts a slow
    watcher (one whose buffers are full: 128 responses queued, and what gRPC and TCP hold, which grows
    with the traffic seen before), then with the record itself: nothing changed in the end. Returns
    the number of rewrites."""
    python = str(Path(lab.agent_command[0]).with_name("python"))
    out = lab.underlay_run([python, "-c", FLOOD, lab.etcd_endpoint, key, value, str(limit)], timeout=300)
    return int(out.stdout.split()[-1])
