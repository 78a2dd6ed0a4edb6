"""Restarts under load: dockerd SIGKILLed with containers running on two hosts (T4); both agents down for
10 s under ping and iperf3 (T5)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.multihost.test_overlay import SLEEP, converge_ping, create_everywhere, ip_of

from .conftest import report
from .leaks import ROOT, assert_no_leaks, store_items

pytestmark = [pytest.mark.lab, pytest.mark.faults]


def address_keys(lab) -> dict[str, dict]:
    return store_items(lab, ROOT + "addresses/")


def seconds_until_ping(h, container: str, target: str, started: float, limit: float = 60.0) -> float:
    """Seconds from ``started`` until one echo from container to target is answered (fails after limit)."""
    while time.monotonic() - started < limit:
        if h.docker("exec", container, "ping", "-c", "1", "-W", "1", target, check=False).returncode == 0:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{container} -> {target}: no answer {limit} s after dockerd restarted")


def kill_dockerd(h) -> None:
    """SIGKILL h's dockerd: a crash, no chance to stop containers or tell the plugin anything."""
    pidfile = Path(h.host_path("/run/docker/containerd/containerd.pid"))
    containerd = int(pidfile.read_text())
    os.kill(h.dockerd.pid, signal.SIGKILL)
    h.dockerd.wait(30)
    h.dockerd = None
    h._client = None
    # Its containerd dies with it (parent-death signal) and is left to PID 1, which on a real host reaps
    # it; this VM's init does not, and the next dockerd takes the zombie for a live containerd and waits
    # for it forever. Its pid file is stale then: remove it as reaping would have made it.
    deadline = time.monotonic() + 10  # it dies a moment later: a fixed sleep was too short when busy
    while Path(f"/proc/{containerd}").exists() and not is_zombie(containerd) and time.monotonic() < deadline:
        time.sleep(0.05)
    if is_zombie(containerd):
        pidfile.unlink(missing_ok=True)


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def state(h, container: str) -> str:
    return h.docker("inspect", "-f", "{{.State.Status}}", container).stdout.strip()


@pytest.mark.parametrize("live_restore", [False, True], ids=["restart-policy", "live-restore"])
def test_dockerd_killed_with_containers_running(make_lab, live_restore):
    """Without live-restore Docker stops every container and starts those with a restart policy again,
    releasing and requesting their addresses: one given with --ip comes back, one without gets whatever
    the pool gives (Docker 20.10 asks for no address, and nothing in the request says which container
    asks). With live-restore the containers keep running and every reservation stays as it was."""
    lab = make_lab(2, etcd=True, daemon_json={"live-restore": True} if live_restore else None)
    lab.start_agents()
    h1, h2 = lab.hosts
    create_everywhere(lab, "rs", "--subnet", "10.55.0.0/24")
    always = ("--restart", "always")
    pinned = {"a1": (h1, "10.55.0.11"), "b1": (h2, "10.55.0.21")}
    for name, (h, ip) in pinned.items():
        h.docker("run", "-d", "--name", name, "--network", "rs", "--ip", ip, *always, lab.image, *SLEEP)
    h1.docker("run", "-d", "--name", "a2", "--network", "rs", *always, lab.image, *SLEEP)
    h2.docker("run", "-d", "--name", "b2", "--network", "rs", *always, lab.image, *SLEEP)
    h1.docker("run", "-d", "--name", "plain", "--network", "rs", lab.image, *SLEEP)  # no restart policy
    boxes = {"a1": h1, "a2": h1, "b1": h2, "b2": h2, "plain": h1}
    addresses = {name: ip_of(h, name, "rs") for name, h in boxes.items()}
    converge_ping(h1, "a1", addresses["b1"])
    converge_ping(h2, "b1", addresses["a1"])
    before = address_keys(lab)
    agents = {h.name: h.agent.pid for h in lab.hosts}

    for h in lab.hosts:
        kill_dockerd(h)
    restarted = time.monotonic()
    for h in lab.hosts:
        h.start_dockerd(wait=False)
    for h in lab.hosts:
        h.wait_dockerd()
    forward = seconds_until_ping(h1, "a1", addresses["b1"], restarted)
    backward = seconds_until_ping(h2, "b1", addresses["a1"], restarted)

    states = {name: state(h, name) for name, h in boxes.items()}
    running = {name for name, s in states.items() if s == "running"}
    after_ips = {name: ip_of(h, name, "rs") for name, h in boxes.items() if name in running}
    after = address_keys(lab)
    assert running >= {"a1", "a2", "b1", "b2"}, states
    for name in pinned:
        assert after_ips[name] == addresses[name], f"{name}: {addresses[name]} -> {after_ips[name]}"
    if live_restore:
        assert running == set(boxes) and after_ips == addresses
        assert after == before, "the reservations changed under live-restore"
    else:
        assert states["plain"] == "exited", states
    # 0 extra allocations: exactly the gateway and one address per running container, nothing else.
    owned = {k.rsplit("/", 1)[1] for k, v in after.items() if v.get("owner") != "gateway"}
    assert sorted(owned) == sorted(after_ips.values()), f"reserved {sorted(owned)}, in use {after_ips}"
    assert len(after) == len(before) - (len(boxes) - len(running))
    assert {h.name: h.agent.pid for h in lab.hosts} == agents and all(
        h.agent.poll() is None for h in lab.hosts
    )
    assert_no_leaks(lab)
    report(
        "T4",
        f"dockerd SIGKILLed on 2 hosts, 5 containers (4 --restart always, 2 of them --ip), "
        f"live-restore {'on' if live_restore else 'off'}",
        same_address=sum(after_ips.get(n) == ip for n, ip in addresses.items()),
        new_address=sorted(n for n in after_ips if after_ips[n] != addresses[n]),
        no_policy_container=states["plain"],
        extra_allocations=len(owned) - len(after_ips),
        first_ping_h1_to_h2_s=round(forward, 2),
        first_ping_h2_to_h1_s=round(backward, 2),
        agents_restarted=0,
        leaks=0,
    )


def test_agents_killed_for_ten_seconds_lose_no_flow(make_lab):
    lab = make_lab(2, etcd=True)
    lab.start_agents(extra_env={"HOST_TTL": "4"})
    h1, h2 = lab.hosts
    create_everywhere(lab, "steady")
    h1.docker("run", "-d", "--name", "client", "--network", "steady", lab.image, *SLEEP)
    h2.docker("run", "-d", "--name", "server", "--network", "steady", lab.image, "iperf3", "-s")
    server = ip_of(h2, "server", "steady")
    converge_ping(h1, "client", server)
    results: dict[str, object] = {}

    def run(key, *cmd):
        results[key] = h1.docker("exec", "client", *cmd, check=False, timeout=120)

    flows = [
        threading.Thread(target=run, args=("ping", "ping", "-c", "80", "-i", "0.25", "-W", "1", server)),
        threading.Thread(target=run, args=("iperf", "iperf3", "-c", server, "-t", "20", "-b", "50M", "-J")),
    ]
    for t in flows:
        t.start()
    time.sleep(3)
    for h in lab.hosts:
        h.kill_agent()
    time.sleep(10)
    for h in lab.hosts:
        h.start_agent(extra_env={"HOST_TTL": "4"})
    for t in flows:
        t.join()
    pinged, iperf = results["ping"], results["iperf"]
    sent, received = map(
        int, re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", pinged.stdout).groups()
    )
    assert iperf.returncode == 0, iperf.stdout[-400:] + iperf.stderr
    end = json.loads(iperf.stdout)["end"]
    report(
        "T5",
        "both agents SIGKILLed for 10 s under ping (4/s) and iperf3 (50 Mbit/s, 20 s)",
        pings_sent=sent,
        pings_lost=sent - received,
        iperf3_mbit_s=round(end["sum_received"]["bits_per_second"] / 1e6, 1),
        iperf3_retransmits=end["sum_sent"].get("retransmits"),
    )
    assert sent == 80 and received == sent, pinged.stdout[-400:]
    # the restarted agents adopted everything and still converge
    h2.docker("run", "-d", "--name", "late", "--network", "steady", lab.image, *SLEEP)
    converge_ping(h1, "client", ip_of(h2, "late", "steady"))
