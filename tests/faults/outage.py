"""The harness of T13 (test_outage.py): a lab whose hosts each reach etcd through their own cuttable proxy
(tests/faults/etcd_proxy.py), containers started one after another during a cut, the store and the
datapath watched after the heal, and the uniqueness of every container address."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from tests.faults.etcd_proxy import EtcdProxy
from tests.faults.leaks import ROOT, docker_endpoints, store_items
from tests.faults.test_churn import reason
from tests.lab.system import wait_until
from tests.multihost.test_overlay import SLEEP, networks

PROXY_PORT = 23800  # + the host's index: one proxy per host, beside etcd on the underlay


class ProxiedLab:
    """A lab up with its agents started, each host's agent given only its own proxy as ETCD_ENDPOINTS, so
    one host can be cut off etcd while the others (and the test's etcdctl) still reach it."""

    def __init__(self, lab, extra_env: dict[str, str] | None = None) -> None:
        self.lab = lab
        self.proxies: dict[str, EtcdProxy] = {}
        for h in lab.hosts:
            self.proxies[h.name] = EtcdProxy(
                f"/run/netns/{lab.underlay_netns}",
                (lab.underlay_address, PROXY_PORT + h.index),
                ("127.0.0.1", 2379),
            )
        for h in lab.hosts:
            env = {"ETCD_ENDPOINTS": self.proxies[h.name].endpoint, **(extra_env or {})}
            h.start_agent(extra_env=env, wait=False)
        for h in lab.hosts:
            h.wait_agent(30)

    def cut(self, hosts) -> None:
        for h in hosts:
            self.proxies[h.name].cut(math.inf)

    def heal(self, hosts) -> None:
        for h in hosts:
            self.proxies[h.name].heal()

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()


@pytest.fixture
def proxied_lab(make_lab) -> Iterator[Callable[..., ProxiedLab]]:
    """``proxied_lab(n_hosts, **agent_env)``: see ProxiedLab; its proxies close after the test."""
    made: list[ProxiedLab] = []

    def factory(n_hosts: int = 2, **agent_env: str) -> ProxiedLab:
        made.append(ProxiedLab(make_lab(n_hosts, etcd=True), agent_env))
        return made[-1]

    yield factory
    for p in made:
        for h in p.lab.hosts:  # the agents' view of the outage, for a failed run's report
            print(f"--- {h.name} agent log\n{h.agent_log_tail(30)}")
        p.close()


@dataclass
class Started:
    """What one host started during an outage: the containers that run, and the failures by reason."""

    host: str
    names: list[str] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    took: list[float] = field(default_factory=list)  # seconds per successful `docker run`


def start_until(h, image: str, network: str, until: float, limit: int, prefix: str) -> Started:
    """`docker run -d` on ``network`` one after another until ``until`` (monotonic) or ``limit`` runs."""
    started = Started(h.name)
    i = 0
    while time.monotonic() < until and len(started.names) < limit:
        name = f"{prefix}{h.name}n{i}"
        i += 1
        t = time.monotonic()
        proc = h.docker("run", "-d", "--name", name, "--network", network, image, *SLEEP, check=False)
        if proc.returncode == 0:
            started.names.append(name)
            started.took.append(time.monotonic() - t)
        else:
            started.failed[reason(proc.stderr)] += 1
            h.docker("rm", "-f", name, check=False)  # Docker may keep a created container
    return started


def start_during(lab, hosts, network: str, seconds: float, limit: int, prefix: str) -> dict[str, Started]:
    """start_until on every host of ``hosts`` at once (a thread each) for ``seconds``."""
    until = time.monotonic() + seconds
    out: dict[str, Started] = {}

    def one(h) -> None:
        out[h.name] = start_until(h, lab.image, network, until, limit, prefix)

    threads = [threading.Thread(target=one, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def endpoint_ids(h, names: set[str]) -> set[str]:
    """The pyoverlay endpoint ids Docker on h has for the containers ``names`` (it answers offline)."""
    return {eid for eid, e in docker_endpoints(h).items() if e["name"] in names}


def store_endpoint_ids(lab) -> set[str]:
    return {k.rsplit("/", 1)[1] for k in store_items(lab, ROOT + "topology/endpoints/")}


def wait_published(lab, present: set[str], absent: set[str], timeout: float) -> float:
    """Seconds until the store holds every endpoint of ``present`` and none of ``absent``."""
    start = time.monotonic()
    missing: set[str] = set()

    def done() -> bool:
        nonlocal missing
        held = store_endpoint_ids(lab)
        missing = (present - held) | (absent & held)
        return not missing

    try:
        wait_until(done, timeout, "the journal published")
    except Exception as exc:  # noqa: BLE001 - say which endpoints
        raise AssertionError(f"{len(missing)} endpoints not (un)published: {sorted(missing)[:10]}") from exc
    return time.monotonic() - start


def ip_of(h, container: str, network: str) -> str:
    out = h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
    return json.loads(out)[network]["IPAddress"]


def pings(h, container: str, target: str) -> bool:
    return h.docker("exec", container, "ping", "-c1", "-W1", target, check=False).returncode == 0


def wait_traffic(h, container: str, target: str, timeout: float = 60) -> float:
    """Seconds until ``container`` on h gets an answer from ``target``."""
    start = time.monotonic()
    wait_until(lambda: pings(h, container, target), timeout, f"{h.name}/{container} -> {target}")
    return time.monotonic() - start


def unreachable(h, container: str, targets: list[str]) -> list[str]:
    """Which of ``targets`` ``container`` on h gets no echo answer from: one exec, eight pings at a time
    (all at once, a hundred ARP broadcasts flooded to a hundred ports overrun the bridge's backlog and
    lose the first echoes of the check itself)."""
    script = (
        'n=0; for ip in "$@"; do (ping -c1 -W2 "$ip" >/dev/null 2>&1 || echo "$ip") & n=$((n + 1)); '
        "[ $((n % 8)) -eq 0 ] && wait; done; wait"
    )
    out = h.docker("exec", container, "sh", "-c", script, "sh", *targets, timeout=60)
    return out.stdout.split()


def wait_all_pairs(lab, members: dict[str, list[str]], network: str, timeout: float = 30) -> tuple[int, int]:
    """Every container of ``members`` (host name -> names) reaches every other one. A pair counts as
    reached once one echo came back: each round asks again only the pairs still lost, four sources at a
    time, for ``timeout`` seconds after the first round (a minute or more at the full counts). Returns the
    number of pairs and how many of them the first round lost (a first echo that waited on ARP, say)."""
    where = {(h.name, c): ip_of(h, c, network) for h in lab.hosts for c in members.get(h.name, [])}
    lost = {src: [ip for key, ip in where.items() if key != src] for src in where}
    first_round: int | None = None
    deadline = math.inf
    while lost and time.monotonic() < deadline:
        with ThreadPoolExecutor(4) as pool:
            answers = pool.map(
                lambda item: unreachable(lab.host(item[0][0]), item[0][1], item[1]), lost.items()
            )
            lost = {src: still for src, still in zip(list(lost), answers, strict=True) if still}
        if first_round is None:
            first_round = sum(len(v) for v in lost.values())
            deadline = time.monotonic() + timeout
        if lost:
            time.sleep(1)
    pairs = sum(len(v) for v in lost.values())
    assert not lost, (
        f"{pairs} pairs never reached, from {len(lost)} containers: {dict(list(lost.items())[:5])}"
    )
    return len(where) * (len(where) - 1), first_round or 0


def assert_unique(lab) -> int:
    """No two containers on any hosts hold one address on a pyoverlay network, and the store's endpoint
    records and address keys agree with Docker. Returns the number of addresses checked."""
    docker: dict[str, dict] = {}  # endpoint id -> docker_endpoints() entry, with the host
    for h in lab.hosts:
        docker.update({eid: {**e, "host": h.name} for eid, e in docker_endpoints(h).items()})
    holders: dict[str, list[str]] = {}
    for h in lab.hosts:  # from `docker inspect` of every container, as the brief's check reads them
        pyoverlay = set(networks(h))
        ids = h.docker("ps", "-aq").stdout.split()
        for c in json.loads(h.docker("inspect", *ids).stdout) if ids else []:
            for net, s in (c["NetworkSettings"]["Networks"] or {}).items():
                if net in pyoverlay and s.get("IPAddress"):
                    holders.setdefault(s["IPAddress"], []).append(f"{h.name}/{c['Name'].lstrip('/')}")
    dupes = {ip: who for ip, who in holders.items() if len(who) > 1}
    assert not dupes, f"one address, several containers: {dupes}"
    items = store_items(lab)
    records = {k.rsplit("/", 1)[1]: v for k, v in items.items() if k.startswith(ROOT + "topology/endpoints/")}
    differ = []
    for eid, e in docker.items():
        record = records.get(eid, {})
        if (record.get("address") or "").split("/")[0] != e["ipv4"]:
            differ.append(f"{e['host']}/{e['name']}: docker {e['ipv4']}, store {record.get('address')}")
    assert not differ, f"store endpoint records disagree with Docker: {differ[:10]}"
    keys = {k.rsplit("/", 1)[1]: v for k, v in items.items() if k.startswith(ROOT + "addresses/")}
    # a container's address is owned by its MAC in the pool (Endpoint.address_owner)
    wrong = [
        f"{e['ipv4']}: key owner {keys[e['ipv4']].get('owner')}, endpoint {e['host']}/{e['name']} {e['mac']}"
        for e in docker.values()
        if e["ipv4"] in keys and keys[e["ipv4"]].get("owner") != e["mac"]
    ]
    assert not wrong, f"address keys name another owner: {wrong[:10]}"
    return len(holders)
