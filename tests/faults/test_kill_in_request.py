"""T3: the agent SIGKILLed in the middle of each plugin request type (plugin/failpoints.py), restarted as a
supervisor would; Docker's retry of the request gets the answer a clean run gives, and nothing leaks.

Docker 20.10's flows, as the agent log shows them: `network create` = RequestPool, RequestAddress (the
gateway), CreateNetwork; `network rm` = DeleteNetwork, ReleaseAddress (the gateway), ReleasePool; `run` and
`network connect` = RequestAddress, CreateEndpoint, Join; `rm -f` and `network disconnect` = Leave,
DeleteEndpoint, ReleaseAddress. Each kill takes one (failpoint, command) pair of CASES in turn: the full
run's 100 kills go round the 24 pairs (4 or 5 each); CI's 16 take the first 16, which reach every point
once and RequestAddress and ReleaseAddress in both of their flows."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from plugin.failpoints import ENV, POINTS
from tests.faults import leaks
from tests.faults.conftest import count
from tests.lab.system import wait_until

pytestmark = [pytest.mark.lab, pytest.mark.faults]

SUBNET = "10.60.0.0/24"  # the containers' network
SUBNET2 = "10.63.0.0/24"  # the network containers are connected to and disconnected from
MADE = "10.61.0.0/24"  # the network created and removed by the network cases


@dataclass(frozen=True)
class Case:
    point: str
    command: str  # "create", "remove", "run", "rm", "connect", "disconnect"


_FLOWS = {
    "create": ("RequestPool.after_store", "RequestAddress.after_store", "CreateNetwork.after_store"),
    "remove": ("DeleteNetwork.after_store", "DeleteNetwork.after_kernel", "ReleaseAddress.after_store"),
    "run": ("RequestAddress.after_store", "CreateEndpoint.after_store", "CreateEndpoint.after_kernel"),
    "rm": ("Leave.before_answer", "DeleteEndpoint.after_kernel", "DeleteEndpoint.after_store"),
}
CASES = [
    *(Case(p, c) for c, points in _FLOWS.items() for p in points),
    Case("CreateNetwork.after_kernel", "create"),
    Case("ReleasePool.after_store", "remove"),
    Case("Join.after_kernel", "run"),
    Case("ReleaseAddress.after_store", "rm"),
    *(Case(p, "connect") for p in (*_FLOWS["run"], "Join.after_kernel")),
    *(Case(p, "disconnect") for p in (*_FLOWS["rm"], "ReleaseAddress.after_store")),
]
assert {c.point for c in CASES[:16]} == POINTS and len(CASES) == 24


def mac_of(ip: str) -> str:
    """What a clean run gives an address: 02:42 and its four bytes (checked on a clean run first)."""
    return ":".join(f"{b:02x}" for b in (0x02, 0x42, *ipaddress.ip_address(ip).packed))


def attachment(h, container: str, network: str) -> dict:
    out = h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
    return json.loads(out).get(network) or {}


def subnet_and_gateway(lab, h, network: str) -> tuple[str, list[str]]:
    """The subnet Docker shows, and the gateway address the store holds for it (Docker shows none)."""
    subnet = json.loads(h.docker("network", "inspect", network).stdout)[0]["IPAM"]["Config"][0]["Subnet"]
    addresses = leaks.store_items(lab, f"{leaks.ROOT}addresses/{subnet}/")
    return subnet, [k.rsplit("/", 1)[1] for k, v in addresses.items() if v.get("owner") == "gateway"]


def network_leaks(lab, h) -> list[str]:
    """Bindings without a Docker network, and pools or addresses of no network (leaks.audit looks at
    endpoints only)."""
    items = leaks.store_items(lab)
    names = h.docker("network", "ls", "--filter", "driver=pyoverlay", "-q", "--no-trunc").stdout.split()
    bound = {k.rsplit("/", 1)[1] for k in items if k.startswith(leaks.ROOT + "bindings/")}
    subnets = {v.get("subnet") for k, v in items.items() if k.startswith(leaks.ROOT + "topology/networks/")}
    problems = [f"binding of Docker network {d[:12]} that the daemon lacks" for d in bound - set(names)]
    problems += [f"daemon network {d[:12]} without a binding" for d in set(names) - bound]
    for key in items:
        rest = key.removeprefix(leaks.ROOT)
        if rest.startswith("pools/"):
            pool = rest.removeprefix("pools/")  # a pool's id is its subnet: pools/10.61.0.0/24
        elif rest.startswith("addresses/"):
            pool = rest.removeprefix("addresses/").rsplit("/", 1)[0]  # addresses/<pool>/<ip>
        else:
            continue
        if pool not in subnets:
            problems.append(f"{rest} belongs to no network")
    return problems


class KillRig:
    """One host; the agent restarted with a failpoint before each faulted command."""

    def __init__(self, lab) -> None:
        self.lab, self.h = lab, lab.hosts[0]
        self.n = 0
        self.made: tuple[str, list[str]] | None = None  # subnet and gateway a clean `network create` gives

    def ip(self, command: str) -> str:
        """The --ip of this kill's run (or connect): a new one each time, its MAC known in advance."""
        return f"10.{63 if command == 'connect' else 60}.0.{10 + self.n % 200}"

    def command(self, case: Case) -> list[str]:
        ip = self.ip(case.command)
        return {
            "create": ["network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay"]
            + ["--subnet", MADE, "made"],
            "remove": ["network", "rm", "made"],
            "run": ["run", "-d", "--name", "victim", "--network", "ov", "--ip", ip, self.lab.image]
            + ["sleep", "600"],
            "rm": ["rm", "-f", "victim"],
            "connect": ["network", "connect", "--ip", ip, "ov2", "box"],
            "disconnect": ["network", "disconnect", "ov2", "box"],
        }[case.command]

    def prepare(self, case: Case) -> None:
        """Bring the host to where the faulted command starts (the agent runs without failpoints)."""
        h, c = self.h, case.command
        if c == "remove":
            h.create_network("made", "--subnet", MADE)
        elif c == "rm":
            self.clean(self.command(Case("", "run")))
        elif c == "disconnect":
            self.clean(self.command(Case("", "connect")))

    def clean(self, args: list[str]) -> None:
        self.h.docker(*args)

    def faulted(self, case: Case) -> tuple[subprocess.CompletedProcess[str], float, bool]:
        """Run the command with the agent set to die at the point; restart it once dead. (result,
        seconds from the kill to the command's return, whether the point was hit)."""
        h = self.h
        h.stop_agent()
        h.start_agent(extra_env={ENV: f"{case.point}=kill"})
        args = [h.engine.docker, "-H", h.docker_host, *self.command(case)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: proc.poll() is not None or h.agent.poll() is not None, 60, f"{case} to start")
        hit = h.agent.poll() is not None
        killed = time.monotonic()
        if hit:
            h.agent = None
            h.start_agent()  # as a supervisor would, without the failpoint
        out, err = proc.communicate(timeout=90)
        recovery = time.monotonic() - killed
        if not hit:
            h.stop_agent()
            h.start_agent()
        return subprocess.CompletedProcess(args, proc.returncode, out, err), recovery, hit

    def check_answer(self, case: Case) -> None:
        """The state a clean run of the command leaves, as Docker reports it."""
        h, c = self.h, case.command
        if c == "create":
            assert subnet_and_gateway(self.lab, h, "made") == self.made
        elif c in ("run", "connect"):
            container, network = ("victim", "ov") if c == "run" else ("box", "ov2")
            got = attachment(h, container, network)
            want_ip = self.ip(c)
            assert (got["IPAddress"], got["MacAddress"]) == (want_ip, mac_of(want_ip)), got
            record = leaks.store_items(self.lab, f"{leaks.ROOT}topology/endpoints/")
            by_id = {k.rsplit("/", 1)[1]: v for k, v in record.items()}
            assert by_id[got["EndpointID"]]["mac"] == got["MacAddress"]
        elif c in ("remove", "rm"):
            listed = h.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
            nets = h.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
            assert ("victim" not in listed) if c == "rm" else ("made" not in nets)
        else:
            assert attachment(h, "box", "ov2") == {}

    def undo(self, case: Case) -> None:
        """Back to the starting state, cleanly."""
        c = case.command
        if c == "create":
            self.clean(["network", "rm", "made"])
        elif c == "run":
            self.clean(["rm", "-f", "victim"])
        elif c == "connect":
            self.clean(["network", "disconnect", "ov2", "box"])

    def assert_clean(self) -> None:
        leaks.assert_no_leaks(self.lab)
        try:
            wait_until(lambda: not network_leaks(self.lab, self.h), 40, "no network leaks")
        except RuntimeError:
            raise AssertionError(f"network leaks: {network_leaks(self.lab, self.h)}") from None


def test_kill_in_each_request_type(make_lab, figures):
    kills = count("t3_kills", full=100, ci=16)
    lab = make_lab(1, etcd=True)
    h = lab.hosts[0]
    h.start_agent()
    h.create_network("ov", "--subnet", SUBNET)
    h.create_network("ov2", "--subnet", SUBNET2)
    h.docker("run", "-d", "--name", "box", "--network", "ov", lab.image, "sleep", "3600")
    clean = attachment(h, "box", "ov")
    assert clean["MacAddress"] == mac_of(clean["IPAddress"])  # the rule check_answer expects
    rig = KillRig(lab)
    h.create_network("made", "--subnet", MADE)
    rig.made = subnet_and_gateway(lab, h, "made")
    h.docker("network", "rm", "made")
    by_request: Counter[str] = Counter()
    succeeded: Counter[str] = Counter()
    recoveries: list[float] = []
    failures: list[str] = []
    for i in range(kills):
        case = CASES[i % len(CASES)]
        rig.n = i
        rig.prepare(case)
        result, recovery, hit = rig.faulted(case)
        by_request[case.point.split(".")[0]] += 1
        if not hit:
            failures.append(f"{case}: the failpoint was never reached")
        elif result.returncode != 0:
            failures.append(f"{case}: docker {case.command} failed after the retry: {result.stderr.strip()}")
        else:
            succeeded[case.point.split(".")[0]] += 1
            recoveries.append(recovery)
            try:
                rig.check_answer(case)
            except AssertionError as exc:
                failures.append(f"{case}: another answer than a clean run's: {exc}")
        rig.undo(case)
        rig.assert_clean()
    recoveries.sort()
    figures(
        "T3",
        "SIGKILL in the middle of each request type, agent restarted, Docker retries",
        kills=kills,
        kills_by_request=dict(by_request),
        succeeded_after_retry=sum(succeeded.values()),
        failures=len(failures),
        leaks=0,  # assert_clean after every kill
        recovery_p50_s=round(recoveries[len(recoveries) // 2], 2) if recoveries else None,
        recovery_max_s=round(recoveries[-1], 2) if recoveries else None,
    )
    assert not failures, "\n".join(failures) + "\n" + h.agent_log_tail(30)
