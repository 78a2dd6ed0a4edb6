"""T2: run/rm cycles on 2 hosts while faults are injected in about 5 % of them: an agent SIGKILLed at a
random moment (restarted a moment later, as a supervisor would), or the etcd connection cut through a
proxy (tests/faults/etcd_proxy.py: every connection closed, new ones refused for a few seconds). Runs may
fail during a fault (counted by reason); afterwards nothing may be left: no address, endpoint, device,
FORWARD rule or key that Docker's and the kernel's own listings do not account for (leaks.audit).

Each host runs its cycles one after another (a cycle: `docker run -d`, then `docker rm -f`). In every
block of 20 cycles of a host (FAULT_RATE = 5 %) one cycle, drawn at random, gets a fault of a random kind
that fires after a random delay, so it lands anywhere in the run's or the rm's requests. The random seed is
printed (FAULTS_T2_SEED replays a run's draws)."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter

import pytest

from tests.faults import leaks
from tests.faults.conftest import count
from tests.faults.etcd_proxy import EtcdProxy
from tests.faults.test_concurrency import create_everywhere, remove_all

pytestmark = [pytest.mark.lab, pytest.mark.faults]

FAULT_RATE = 0.05
BLOCK = round(1 / FAULT_RATE)  # cycles per fault
PROXY_PORT = 23790
AGENT_DOWN = (0.2, 2.0)  # seconds between the kill and the restart
CUT = (2.0, 5.0)  # seconds the etcd connection stays refused


def reason(stderr: str) -> str:
    """A failure's cause without its ids, to count alike failures together."""
    line = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    line = re.sub(r"\b[0-9a-f]{12,64}\b", "<id>", line)
    return re.sub(r"\b\d+(\.\d+){3}(/\d+)?\b", "<ip>", line)[-160:]


class Faults:
    """Injects the faults, one per host at a time, and counts them."""

    def __init__(self, lab, proxy: EtcdProxy, seed: int) -> None:
        self.lab, self.proxy, self.seed = lab, proxy, seed
        self.rng = random.Random(seed)  # kinds, delays and durations (several threads draw: order varies)
        self.injected: Counter[str] = Counter()
        self.windows: list[tuple[float, float]] = []  # (from, to) of each fault: down, or cut
        self.errors: list[str] = []
        self._busy = {h.name: threading.Lock() for h in lab.hosts}
        self._timers: list[threading.Timer] = []

    def maybe(self, h, cycle: int) -> None:
        """Inject this host's fault if ``cycle`` is the one drawn for its block of BLOCK cycles."""
        block = cycle // BLOCK
        if cycle != block * BLOCK + random.Random(f"{self.seed}-{h.name}-{block}").randrange(BLOCK):
            return
        kind = self.rng.choice(("kill", "cut"))
        delay = self.rng.uniform(0.0, 1.5)  # a cycle takes ~1-2 s: anywhere in the run or the rm
        timer = threading.Timer(delay, self._kill if kind == "kill" else self._cut, args=(h,))
        timer.start()
        self._timers.append(timer)

    def _kill(self, h) -> None:
        if not self._busy[h.name].acquire(blocking=False):
            return  # the agent is already down: a second kill would be no new fault
        try:
            start = time.monotonic()
            h.kill_agent()
            self.injected["agent SIGKILL"] += 1
            time.sleep(self.rng.uniform(*AGENT_DOWN))
            h.agent = None
            h.start_agent(extra_env={"ETCD_ENDPOINTS": self.proxy.endpoint}, timeout=60)
            self.windows.append((start, time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - reported at the end
            self.errors.append(f"{h.name}: restart failed: {exc}")
        finally:
            self._busy[h.name].release()

    def _cut(self, _h) -> None:
        seconds = self.rng.uniform(*CUT)
        start = time.monotonic()
        self.proxy.cut(seconds)
        self.injected["etcd cut"] += 1
        self.windows.append((start, start + seconds))

    def outside(self, spans: list[tuple[float, float]], grace: float = 2.0) -> int:
        """How many of the (from, to) spans of failed commands overlap no fault (within ``grace``)."""
        return sum(not any(a <= end + grace and start <= b for a, b in self.windows) for start, end in spans)

    def wait(self) -> None:
        for timer in self._timers:
            timer.join()
        for h in self.lab.hosts:
            with self._busy[h.name]:
                pass


def replays(lab) -> int:
    """Requests Docker resent empty after a kill that an agent answered from the body it had kept."""
    return sum(h.agent_log().count("answering the request left in flight") for h in lab.hosts)


def print_unreplayed(lab) -> None:
    """What led to an empty retry nothing was kept for (the agent died before it read the request)."""
    for h in lab.hosts:
        lines = [x for x in h.agent_log().splitlines() if " DEBUG " not in x and "urllib3" not in x]
        for i, line in enumerate(lines):
            if "missing field" in line:
                print(f"--- {h.name}: an empty retry\n" + "\n".join(lines[max(0, i - 12) : i + 1]))


def churn(
    h, cycles: int, image: str, faults: Faults, failed: Counter[str], spans: list[tuple[float, float]]
) -> None:
    for i in range(cycles):
        faults.maybe(h, i)
        name = f"c{h.name}x{i}"
        start = time.monotonic()
        run = h.docker("run", "-d", "--name", name, "--network", "churn", image, "sleep", "600", check=False)
        if run.returncode != 0:
            failed["run: " + reason(run.stderr)] += 1
            spans.append((start, time.monotonic()))
        start = time.monotonic()
        rm = h.docker("rm", "-f", name, check=False)
        if rm.returncode != 0 and "No such container" not in rm.stderr:
            failed["rm: " + reason(rm.stderr)] += 1
            spans.append((start, time.monotonic()))


def test_churn_under_faults_leaks_nothing(make_lab, figures):
    cycles = count("t2_cycles", full=2000, ci=120)
    seed = int(os.environ.get("FAULTS_T2_SEED") or random.randrange(1 << 30))
    print(f"T2 seed {seed}")
    lab = make_lab(2, etcd=True)
    proxy = EtcdProxy(
        f"/run/netns/{lab.underlay_netns}", (lab.underlay_address, PROXY_PORT), ("127.0.0.1", 2379)
    )
    try:
        lab.start_agents(extra_env={"ETCD_ENDPOINTS": proxy.endpoint})
        create_everywhere(lab, "churn", "10.72.0.0/23")
        faults = Faults(lab, proxy, seed)
        failed_per_host: list[Counter[str]] = [Counter(), Counter()]
        spans: list[tuple[float, float]] = []  # when each failed command ran
        per_host = [cycles // 2 + (i < cycles % 2) for i in range(2)]
        start = time.monotonic()
        workers = [
            threading.Thread(target=churn, args=(h, n, lab.image, faults, failed, spans))
            for h, n, failed in zip(lab.hosts, per_host, failed_per_host, strict=True)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        faults.wait()
        duration = time.monotonic() - start
        failed = failed_per_host[0] + failed_per_host[1]
        # the lab settles: agents up, etcd reachable, every container gone; then it must hold nothing
        for h in lab.hosts:
            if h.agent is None or h.agent.poll() is not None:
                h.agent = None
                h.start_agent(extra_env={"ETCD_ENDPOINTS": proxy.endpoint})
        remove_all(lab)
        settle = time.monotonic()
        try:
            leaks.assert_no_leaks(lab, timeout=120)  # own garbage goes after docker_sync's 30 s grace
            leaked: dict[str, list[str]] = {}
        except AssertionError:
            leaked = leaks.audit(lab)
        figures(
            "T2",
            f"{cycles} run/rm cycles on 2 hosts, a fault in {FAULT_RATE:.0%} of cycles (seed {seed})",
            cycles=cycles,
            faults=dict(faults.injected),
            failed_commands=sum(failed.values()),
            failed_by_reason=dict(failed),
            failed_outside_faults=faults.outside(spans),
            replayed_after_kill=replays(lab),
            leaks=sum(len(v) for v in leaked.values()),
            duration_s=round(duration, 1),
            settle_s=round(time.monotonic() - settle, 1),
        )
        print_unreplayed(lab)
        assert not faults.errors, faults.errors
        assert not any(leaked.values()), leaked
        assert sum(faults.injected.values()) > 0, "no fault was injected: nothing was tested"
    finally:
        proxy.close()
