"""T10: only member hosts may inject VXLAN. Crafted VXLAN packets with a member network's VNI, carrying UDP
for a container, are sent to its host from a non-member underlay address (the lab's underlay namespace,
where etcd lives) and from a member host: the first are dropped, the second delivered (the control: the
test can fail). The allow-list survives an agent restart, drops a forgotten host, and goes with the last
network."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.faults.conftest import count
from tests.faults.containers import ROOT, listening, result, start, tool
from tests.lab.system import wait_until
from tests.multihost.test_overlay import SLEEP, create_everywhere, ip_of

pytestmark = [pytest.mark.lab, pytest.mark.faults]

SUBNET = "10.71.0.0/24"
ALLOWED = (
    "import json; from driver import vtep_filter as f; "
    "a = f.allowed(None); print(json.dumps(a and sorted(a)))"
)


def allowed(h) -> list[str] | None:
    """h's VXLAN allow-list as the kernel holds it (None: no filter)."""
    return json.loads(h.run([sys.executable, "-c", ALLOWED], cwd=str(ROOT)).stdout)


def vni_of(h) -> int:
    [path] = h.network_namespaces()
    return int(path.rsplit("-", 1)[1])


def delivered(lab, h, container: str, send_from, source: str, packets: int) -> int:
    """Datagrams the container on h got while ``packets`` crafted VXLAN packets went to h from source."""
    seconds = str(1.5 + packets * 0.01)
    listener = listening(start(tool(h, container, "tests.vxlan_inject", "listen", "--seconds", seconds)))
    ip = ip_of(h, container, "inj")
    mac = ":".join(f"{b:02x}" for b in (0x02, 0x42, *map(int, ip.split("."))))  # derived from the address
    send_from(
        [sys.executable, "-m", "tests.vxlan_inject", "send", "--source", source, "--to", h.address,
         "--vni", str(vni_of(h)), "--mac", mac, "--ip", ip, "--count", str(packets),
         "--inner-source", "10.71.0.250"],
    )  # fmt: skip
    return result(listener)


def test_only_member_hosts_inject_vxlan(make_lab, figures):  # noqa: F811
    packets = count("t10_packets", 200, 20)
    lab = make_lab(2, etcd=True)
    lab.start_agents(extra_env={"HOST_TTL": "4"})  # a stopped host's lease lapses soon: it can be forgotten
    h1, h2 = lab.hosts
    try:
        create_everywhere(lab, "inj", "--subnet", SUBNET)
        h2.docker("run", "-d", "--name", "target", "--network", "inj", lab.image, *SLEEP)
        wait_until(lambda: allowed(h2) == sorted({h1.address, h2.address}), 20, "h2's allow-list")

        def from_underlay(cmd):
            subprocess.run(["nsenter", f"--net=/run/netns/{lab.underlay_netns}", *cmd], cwd=ROOT, check=True)

        def from_h1(cmd):
            h1.run(cmd, cwd=str(ROOT))

        outsider = delivered(lab, h2, "target", from_underlay, lab.underlay_address, packets)
        member = delivered(lab, h2, "target", from_h1, h1.address, packets)
        # the agent stopped: the kernel keeps the filter (fail closed)
        h2.stop_agent()
        while_down = delivered(lab, h2, "target", from_underlay, lab.underlay_address, packets)
        h2.start_agent(extra_env={"HOST_TTL": "4"})
        # a host forgotten (its agent stopped first, or its heartbeat registers it again) is dropped
        host_id = (h1.workdir / "state" / "host-id").read_text().strip()
        h1.stop_agent()
        forget = [str(lab.agent_command[0]), "forget-host", host_id]
        wait_until(lambda: h2.run(forget, env=h2.agent_env(), check=False).returncode == 0, 30, "forget h1")
        wait_until(lambda: allowed(h2) == [h2.address], 20, "h1 gone from h2's allow-list")
        forgotten = delivered(lab, h2, "target", from_h1, h1.address, packets)
        # the last network gone: no VXLAN socket to guard, no filter
        h2.docker("rm", "-f", "target")
        h2.docker("network", "rm", "inj")
        wait_until(lambda: allowed(h2) is None, 40, "h2's filter removed with its last network")
        figures(
            "T10",
            "crafted VXLAN packets (member VNI, UDP to a container) from each source",
            sent_per_source=packets,
            non_member_delivered=outsider,
            member_delivered=member,
            non_member_delivered_agent_down=while_down,
            forgotten_host_delivered=forgotten,
        )
        assert member == packets, "a member's packets must arrive (the control)"
        assert (outsider, while_down, forgotten) == (0, 0, 0)
    finally:
        for h in lab.hosts:
            print(f"--- {h.name}\n{h.agent_log_tail(20)}")
