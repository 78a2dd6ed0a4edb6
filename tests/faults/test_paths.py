"""Paths under faults: an address that moves to another host leaves no stale FDB or neighbour entry on any
host (T8); path MTU at underlay 1500 and 9000 has no black hole (T9)."""

from __future__ import annotations

import concurrent.futures
import json
import sys
import time

import pytest

from tests.lab.system import DF_PING_SCRIPT
from tests.multihost.test_overlay import SLEEP, converge_ping, create_everywhere, ip_of

from .conftest import report

pytestmark = [pytest.mark.lab, pytest.mark.faults]

MOVE_BOUND = 1.0  # seconds: the "after 1 s"
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


def sandbox(h, container: str) -> str:
    return h.docker("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", container).stdout.strip()


def probe(h, dst: str, size: int, netns: str | None = None, timeout: float = 3.0) -> tuple[str, float]:
    """(outcome, seconds) of one DF echo of ``size`` payload bytes, from h or from a namespace on h."""
    enter = ["nsenter", f"--net={netns}"] if netns else []
    cmd = [*enter, sys.executable, "-c", DF_PING_SCRIPT, dst, str(size), str(timeout)]
    out = h.run(cmd, check=False).stdout.split()
    return out[0], float(out[1])


@pytest.mark.parametrize("mtu", [1500, 9000])
def test_path_mtu_has_no_black_hole(make_lab, mtu):
    lab = make_lab(2, etcd=True, mtu=mtu)
    lab.start_agents()
    h1, h2 = lab.hosts
    create_everywhere(lab, "pm", "--subnet", "10.53.0.0/24")
    h1.docker("run", "-d", "--name", "p1", "--network", "pm", lab.image, *SLEEP)
    h2.docker("run", "-d", "--name", "p2", "--network", "pm", lab.image, "iperf3", "-s")
    inner = mtu - VXLAN_OVERHEAD
    assert h1.docker("exec", "p1", "cat", "/sys/class/net/eth0/mtu").stdout.strip() == str(inner)
    ip1, ip2 = ip_of(h1, "p1", "pm"), ip_of(h2, "p2", "pm")
    converge_ping(h1, "p1", ip2)
    full = inner - 28  # IPv4 20 + ICMP 8: the packet is exactly the container MTU
    figures: dict[str, object] = {"underlay_mtu": mtu, "container_mtu": inner}
    for (h, box, dst), label in [((h1, "p1", ip2), "h1>h2"), ((h2, "p2", ip1), "h2>h1")]:
        ns = sandbox(h, box)
        outcome, took = probe(h, dst, full, ns)
        assert outcome == "reply", f"{label}: DF echo of exactly {inner} bytes: {outcome}"
        over, over_took = probe(h, dst, full + 1, ns)
        # An error the sender sees (its own route refuses, or an ICMP from the path), never silence.
        assert over in ("emsgsize", "frag-needed"), f"{label}: {inner + 1} bytes with DF: {over}"
        figures[f"{label}_full_s"], figures[f"{label}_over"] = round(took, 4), f"{over} {over_took:.4f}s"
    # Bulk TCP settles on the path MTU by itself (no stall): the flow from the former jumbo test.
    bulk = h1.docker("exec", "p1", "iperf3", "-c", ip2, "-n", "100M", "-J", timeout=120)
    figures["iperf3_gbit_s"] = round(
        json.loads(bulk.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9, 2
    )

    # The host's own path through the exposure: the same container MTU, the same prompt error.
    exposed = h1.run([str(lab.agent_command[0]), "expose", "pm"], env=h1.agent_env())
    assert exposed.stdout.strip().endswith("/24"), exposed.stdout + exposed.stderr
    outcome = "none"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and outcome != "reply":
        outcome, took = probe(h1, ip2, full)
    assert outcome == "reply", f"h1 host -> {ip2}: DF echo of exactly {inner} bytes: {outcome}"
    over, over_took = probe(h1, ip2, full + 1)
    assert over in ("emsgsize", "frag-needed"), f"h1 host -> {ip2}: {inner + 1} bytes with DF: {over}"
    figures["host>h2_over"] = f"{over} {over_took:.4f}s"
    report("T9", f"path MTU, underlay {mtu}", **figures)


def stale_entries(h, mac: str, ip: str, new_vtep: str, local: bool) -> list[str]:
    """What on h still points ``mac``/``ip`` anywhere but the new owner: FDB entries of the MAC whose dst
    is not ``new_vtep`` (on the new owner's host: any VXLAN entry at all), permanent neighbour entries of
    the IP with another MAC."""
    stale = []
    for line in h.in_networks(["bridge", "fdb", "show"]).splitlines():
        if not line.startswith(mac) or " dev povx" not in line:
            continue  # the MAC on a bridge port is local; only entries on the VXLAN device send it away
        dst = line.split(" dst ")[1].split()[0] if " dst " in line else None
        if local or (dst is not None and dst != new_vtep):
            stale.append(f"fdb {line.strip()}")
    for line in h.in_networks(["ip", "neigh", "show", "nud", "permanent"]).splitlines():
        if line.split()[0] == ip and mac not in line:
            stale.append(f"neigh {line.strip()}")
    return stale


def test_address_moved_to_another_host_leaves_no_stale_entry(make_lab):
    lab = make_lab(3, etcd=True)
    lab.start_agents()
    h1, h2, h3 = lab.hosts
    create_everywhere(lab, "mv", "--subnet", "10.54.0.0/24")
    moving = "10.54.0.77"
    for h in lab.hosts:  # each host keeps the network bound, and caches the moving address
        h.docker("run", "-d", "--name", f"w{h.name}", "--network", "mv", lab.image, *SLEEP)
    h1.docker("run", "-d", "--name", "old", "--network", "mv", "--ip", moving, lab.image, *SLEEP)
    mac = json.loads(h1.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", "old").stdout)["mv"][
        "MacAddress"
    ]
    for h in (h2, h3):
        converge_ping(h, f"w{h.name}", moving)
    # The check sees the entries it is about: before the move, they all point at h1.
    assert stale_entries(h3, mac, moving, h2.address, local=False), h3.in_networks(["bridge", "fdb", "show"])

    h1.docker("rm", "-f", "old")
    h2.docker("run", "-d", "--name", "new", "--network", "mv", "--ip", moving, lab.image, *SLEEP)
    started = time.monotonic()

    def settle(h) -> float:
        """Seconds from `docker run` returning until h holds no stale entry (inf after 10 s)."""
        while (took := time.monotonic() - started) < 10:
            if not stale_entries(h, mac, moving, h2.address, local=h is h2):
                return took
            time.sleep(0.02)
        return float("inf")

    with concurrent.futures.ThreadPoolExecutor(len(lab.hosts)) as pool:
        times = dict(zip([h.name for h in lab.hosts], pool.map(settle, lab.hosts), strict=True))
    time.sleep(max(0.0, started + MOVE_BOUND - time.monotonic()))
    after = {h.name: stale_entries(h, mac, moving, h2.address, local=h is h2) for h in lab.hosts}
    # The new owner is reached from both other hosts over the fresh entries.
    for h in (h1, h3):
        converge_ping(h, f"w{h.name}", moving, timeout=5)
    report(
        "T8",
        "address moved h1 -> h2 with --ip, 3 hosts",
        mac=mac,
        **{f"{name}_clean_after_s": round(t, 3) for name, t in times.items()},
    )
    assert not any(after.values()), f"stale entries {MOVE_BOUND} s after the move: {after}"
    assert max(times.values()) <= MOVE_BOUND, f"seconds until no stale entry, per host: {times}"
