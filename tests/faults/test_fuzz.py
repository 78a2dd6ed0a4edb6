"""T12: malformed and random requests on a real agent's socket (``pyoverlay serve`` in a throwaway network
namespace, on the embedded store and on etcd), drawn by hypothesis from the protocol's message shapes
(protocol_strategies).

Properties: every answer is JSON of the protocol's shape (NetworkDriver errors ``{"Err"}``, IpamDriver
errors ``{"Error"}``, a non-200 status; success answers as the call defines them); an unknown path answers
404 ``{"Err"}`` (Docker reads 404 as "not implemented") and a method other than POST 405 ``{"Err"}``; no
5xx (bad input is the client's fault, and a 500 means a handler failed on something we did not expect);
the gunicorn master and worker keep their PIDs (a respawned worker is a crash) and the log holds no
traceback; valid requests on a control network made at the start keep succeeding, interleaved; the
worker's RSS stays bounded; and once everything the fuzz created by chance is removed through the API,
nothing is left in the store or the kernel.

A failure shrinks to a minimal request; the seed is printed (``FUZZ_SEED=N`` replays a run)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings

from tests.etcd_server import EtcdServer
from tests.faults.conftest import count
from tests.faults.protocol_strategies import FuzzRequest, Targets, fuzz_requests
from tests.integration.conftest import AgentProcess, NetnsHost, ip
from tests.integration.test_api import (
    create_endpoint,
    create_network,
    new_id,
    remove_endpoint,
    remove_network,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
REQUESTS = count("t12_requests", full=10_000, ci=5_000)
VALID_EVERY = 50  # fuzz requests between two rounds of valid ones
CONTROL_SUBNET = "10.99.0.0/24"  # the control network: valid calls only, never drawn by the fuzzer
CONTROL_POOL = "10.99.1.0/24"  # a pool without a network: RequestPool .. ReleasePool each round
FUZZ_SUBNET = "10.30.0.0/24"  # the fuzz network, aimed at by the generator
MAX_ERROR_BYTES = 4096  # an error Docker shows the user: it must not echo a megabyte of request back
# Bodies up to 8 MiB pass through the worker; with the mmap threshold pinned (native_memory) each is
# returned to the OS after its request. 100,000 valid requests grow the worker by < 6 MiB
# (docs/benchmarks.md), so 48 MiB over warm-up leaves room for a few large bodies in flight at the end
# while still catching a leak of a fraction of what passed (10,000 requests carry several GiB in all).
RSS_GROWTH_BOUND_KIB = 48 * 1024


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def send(socket_path: str, req: FuzzRequest) -> tuple[int, str, bytes]:
    """(status, content type, body), sent as dockerd sends: no Content-Type."""
    conn = _Unix(socket_path)
    try:
        conn.request(req.method, req.path, body=req.body, headers={"Accept": CONTENT_TYPE})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def _is_cidr(value: Any) -> bool:
    ipaddress.ip_interface(value)  # raises on anything else
    return "/" in value


# What a 200 answers, per call (libnetwork's drivers/remote/api and ipams/remote/api response types)
SUCCESS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "/Plugin.Activate": lambda a: a["Implements"] == ["NetworkDriver", "IpamDriver"],
    "/NetworkDriver.GetCapabilities": lambda a: a["Scope"] in ("local", "global"),
    "/NetworkDriver.CreateEndpoint": lambda a: isinstance(a["Interface"], dict),
    "/NetworkDriver.EndpointOperInfo": lambda a: isinstance(a["Value"], dict),
    "/NetworkDriver.Join": lambda a: isinstance(a["InterfaceName"]["SrcName"], str),
    "/NetworkDriver.AllocateNetwork": lambda a: isinstance(a["Options"], dict),
    "/IpamDriver.GetCapabilities": lambda a: isinstance(a["RequiresMACAddress"], bool),
    "/IpamDriver.GetDefaultAddressSpaces": lambda a: isinstance(a["LocalDefaultAddressSpace"], str),
    "/IpamDriver.RequestPool": lambda a: _is_cidr(a["Pool"]) and bool(a["PoolID"]),
    "/IpamDriver.RequestAddress": lambda a: _is_cidr(a["Address"]),
}


def check_answer(req: FuzzRequest, status: int, content_type: str, data: bytes) -> dict[str, Any]:
    """The per-request properties; returns the decoded answer."""
    if req.method == "HEAD":  # no body by definition
        assert status == 405, status
        return {}
    assert content_type == CONTENT_TYPE, f"{status} answered as {content_type!r}: {data[:300]!r}"
    answer = json.loads(data)
    assert isinstance(answer, dict), answer
    assert status < 500, f"server error {status}: {answer}"
    if req.kind == "path":
        assert status == 404, f"unknown path answered {status}"
    elif req.kind == "method":
        assert status == 405, f"{req.method} answered {status}"
    if status == 200:
        assert "Err" not in answer and "Error" not in answer, answer
        if req.path in SUCCESS:
            assert SUCCESS[req.path](answer) is True, f"{req.path} answered {answer}"
        else:
            assert answer == {}, f"{req.path} answered {answer}"
        return answer
    field = "Error" if req.path.startswith("/IpamDriver.") and req.kind != "path" else "Err"
    assert isinstance(answer.get(field), str) and answer[field].strip(), f"{status} without {field}: {answer}"
    assert len(data) <= MAX_ERROR_BYTES, f"a {len(data)}-byte error: {data[:200]!r}..."
    return answer


def process_ids(master: int) -> tuple[int, int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, f"gunicorn master {master} has workers {children}"
    return master, int(children[0])


def rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise AssertionError(
            f"agent process {pid} is gone: a crash (a respawned worker has another pid)"
        ) from None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class FuzzRun:
    """The run's bookkeeping: what was sent and answered, what the fuzz created by chance (removed through
    the API at the end), and the control network's valid calls."""

    agent: AgentProcess
    control: tuple[str, str, str]  # network id, pool id, gateway
    sent: Counter[str] = field(default_factory=Counter)  # by kind
    statuses: Counter[int] = field(default_factory=Counter)
    waited: Counter[str] = field(default_factory=Counter)  # seconds spent waiting for answers, by kind
    created: dict[str, set[tuple[str, ...]]] = field(
        default_factory=lambda: {"pools": set(), "addresses": set(), "networks": set(), "endpoints": set()}
    )
    valid_calls: int = 0
    valid_failures: list[str] = field(default_factory=list)
    recent: list[FuzzRequest] = field(default_factory=list)

    def fuzz(self, req: FuzzRequest) -> None:
        start = time.monotonic()
        status, content_type, data = send(self.agent.socket, req)
        self.waited[req.kind] += time.monotonic() - start
        self.sent[req.kind] += 1
        self.statuses[status] += 1
        self.recent = [*self.recent[-4:], req]
        answer = check_answer(req, status, content_type, data)
        if status == 200:  # a raw body can be valid too: "" or "{}" asks RequestPool for a default pool
            body = json.loads(req.body) if req.body.strip() else {}
            self._note_created(req.path, body, answer)
        if sum(self.sent.values()) % VALID_EVERY == 0:
            self.valid_round()

    def _note_created(self, path: str, body: dict[str, Any], answer: dict[str, Any]) -> None:
        if path == "/IpamDriver.RequestPool":
            self.created["pools"].add((answer["PoolID"],))
        elif path == "/IpamDriver.RequestAddress":
            self.created["addresses"].add((body["PoolID"], answer["Address"]))
        elif path == "/NetworkDriver.CreateNetwork":
            self.created["networks"].add((body["NetworkID"],))
        elif path == "/NetworkDriver.CreateEndpoint":
            self.created["endpoints"].add((body["NetworkID"], body["EndpointID"]))

    def valid_round(self) -> None:
        """An endpoint's life on the control network and a pool's on the control pool, as dockerd calls."""
        c = self.agent.client
        network_id, pool_id, _ = self.control
        try:
            endpoint_id, address = create_endpoint(c, network_id, pool_id)
            c.ok("NetworkDriver.Join", {"NetworkID": network_id, "EndpointID": endpoint_id, "Options": {}})
            c.ok("NetworkDriver.EndpointOperInfo", {"NetworkID": network_id, "EndpointID": endpoint_id})
            remove_endpoint(c, network_id, pool_id, endpoint_id, address)
            pool = c.ok("IpamDriver.RequestPool", {"AddressSpace": "pyoverlay", "Pool": CONTROL_POOL})
            got = c.ok("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.99.1.7"})
            assert got["Address"] == "10.99.1.7/24", got
            c.ok("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "10.99.1.7"})
            c.ok("IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})
        except AssertionError as exc:
            self.valid_failures.append(f"after {sum(self.sent.values())} ({self.recent}): {exc}")
        self.valid_calls += 13

    def remove_created(self) -> list[str]:
        """Undo, through the API, what fuzz requests valid by chance created; returns refusals."""
        c, refused = self.agent.client, []
        calls = [
            ("NetworkDriver.DeleteEndpoint", {"NetworkID": n, "EndpointID": e})
            for n, e in self.created["endpoints"]
        ]
        calls += [("NetworkDriver.DeleteNetwork", {"NetworkID": n}) for (n,) in self.created["networks"]]
        calls += [
            ("IpamDriver.ReleaseAddress", {"PoolID": p, "Address": a}) for p, a in self.created["addresses"]
        ]
        calls += [("IpamDriver.ReleasePool", {"PoolID": p}) for (p,) in self.created["pools"]]
        for method, body in calls:
            status, answer = c.call(method, body)
            if status != 200:
                refused.append(f"{method} {body}: {status} {answer}")
        return refused


def private_link(host: NetnsHost) -> str:
    """A /32 pair of addresses of this host's own on its uplink; returns the root namespace's end.
    NetnsHost's 10.98.0.0/24 is the same in every one, and other runs' may exist beside it."""
    n = random.randrange(1, 250)
    root, inner, uplink = f"10.96.{n}.254", f"10.96.{n}.1", host.name.replace("pyo-it-", "pyoit")
    ip("addr", "add", f"{root}/32", "dev", uplink)
    ip("route", "add", f"{inner}/32", "dev", uplink, "src", root)
    ip("-n", host.name, "addr", "add", f"{inner}/32", "dev", "ul0")
    ip("-n", host.name, "route", "add", f"{root}/32", "dev", "ul0", "src", inner)
    return root


@pytest.fixture(params=["embedded", "etcd"])
def fuzz_agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AgentProcess]:
    """A real agent in a throwaway network namespace (tests/integration's), on the embedded store or on
    an etcd of its own, listening in the root namespace on a link private to this host."""
    host = NetnsHost(tmp_path)
    etcd = EtcdServer(host=private_link(host)) if request.param == "etcd" else None  # its data on tmpfs
    # No daemon: its Docker sync would rightly remove, 30 s on, the networks the fuzz made that it lacks
    no_docker = {"DOCKER_HOST": f"unix://{tmp_path}/no-dockerd.sock"}
    agent = AgentProcess(host, etcd.start().endpoint if etcd else "", env=no_docker)
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
        host.close()  # its uplink goes with the namespace, and the private link's addresses with it
        if etcd:
            etcd.close()


def leftovers(agent: AgentProcess) -> dict[str, object]:
    """What the store and the kernel still hold, after a wait for the event loop's deferred removals."""
    deadline = time.monotonic() + 10
    while (
        agent.host.links() != {"lo", "ul0"} or agent.host.network_namespaces()
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    store = agent.store()
    try:
        found = {
            "networks": [n.network_id[:12] for n in store.list_networks()],
            "endpoints": [e.endpoint_id[:12] for e in store.list_endpoints()],
            "pools": [p.pool_id for p in store.list_pools()],
            "links": sorted(agent.host.links() - {"lo", "ul0"}),
            "namespaces": agent.host.network_namespaces(),
            "forward rules": agent.host.forward_rules(),
        }
    finally:
        store.close()
    return {k: v for k, v in found.items() if v}


def test_fuzzed_requests_get_json_errors_and_break_nothing(fuzz_agent: AgentProcess, figures) -> None:
    agent, c = fuzz_agent, fuzz_agent.client
    run_seed = int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))
    print(f"T12 seed {run_seed} (FUZZ_SEED={run_seed} replays this run)")
    control = create_network(c, subnet=CONTROL_SUBNET)
    fuzz_network, fuzz_pool, fuzz_gateway = create_network(c, subnet=FUZZ_SUBNET)
    fuzz_endpoints = [create_endpoint(c, fuzz_network, fuzz_pool) for _ in range(2)]
    targets = Targets(
        network_ids=(fuzz_network, new_id(), new_id(), new_id()),
        endpoint_ids=(*(e for e, _ in fuzz_endpoints), new_id(), new_id()),
        subnets=(FUZZ_SUBNET, "10.31.0.0/24", "10.32.0.0/16", "10.200.0.0/24"),
        avoid=frozenset({control[0], control[1], CONTROL_SUBNET, CONTROL_POOL}),
    )
    run = FuzzRun(agent, control)
    assert agent.proc is not None
    pids = process_ids(agent.proc.pid)
    rss = {"start": rss_kib(pids[1])}
    warmup = max(REQUESTS // 10, VALID_EVERY)
    trail: list[float] = []  # MiB

    @seed(run_seed)
    @settings(
        max_examples=REQUESTS,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(req=fuzz_requests(targets))
    def fuzz_one(req: FuzzRequest) -> None:
        run.fuzz(req)
        done = sum(run.sent.values())
        if done % warmup == 0:  # the first tenth is the warm-up; then a sample every tenth, for the trail
            trail.append(round(rss_kib(pids[1]) / 1024, 1))
            rss.setdefault("warm", rss_kib(pids[1]))

    start = time.monotonic()
    fuzz_one()
    duration = time.monotonic() - start
    rss["end"] = rss_kib(pids[1])

    restarted = process_ids(agent.proc.pid) != pids  # a worker gunicorn respawned is a crash
    refused = run.remove_created()
    for endpoint_id, address in fuzz_endpoints:
        remove_endpoint(c, fuzz_network, fuzz_pool, endpoint_id, address)
    remove_network(c, fuzz_network, fuzz_pool, fuzz_gateway)
    remove_network(c, *control)
    left = leftovers(agent)
    log = agent.log.read_text(errors="replace")
    tracebacks = log.count("Traceback")
    total = sum(run.sent.values())
    figures(
        "T12",
        f"fuzzed requests on a real agent's socket ({'etcd' if agent.etcd else 'embedded store'})",
        requests=total,
        by_kind=dict(run.sent),
        by_status=dict(sorted(run.statuses.items())),
        valid_calls=run.valid_calls,
        valid_failures=len(run.valid_failures),
        created_by_chance={k: len(v) for k, v in run.created.items()},
        rss_start_mib=round(rss["start"] / 1024, 1),
        rss_warm_mib=round(rss.get("warm", rss["start"]) / 1024, 1),
        rss_end_mib=round(rss["end"] / 1024, 1),
        rss_trail_mib=trail,
        duration_s=round(duration, 1),
        answer_wait_s={k: round(v, 1) for k, v in run.waited.items()},
        requests_per_s=round(total / duration),
        crashes=int(restarted),
        tracebacks=tracebacks,
        leftovers=left,
        seed=run_seed,
    )
    assert not restarted, (
        f"the gunicorn master or worker was restarted: {pids} became {process_ids(agent.proc.pid)}"
    )
    assert not run.valid_failures, "\n".join(run.valid_failures[:5])
    assert not refused, "\n".join(refused[:10])
    assert tracebacks == 0, log[log.index("Traceback") - 500 :][:4000]
    assert rss["end"] - rss.get("warm", rss["start"]) <= RSS_GROWTH_BOUND_KIB, rss
    assert not left, f"{left}; created by chance: {run.created}"
