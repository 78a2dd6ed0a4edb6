"""UDP multicast across hosts: a sender on h1 reaches receivers on h2 and h3 on the same network, and
one on h1 itself, but not a receiver on another network. The receivers on h2 and h3 join before h1 has
anything on the network, so h1's bridge never hears their IGMP reports (with no querier on the overlay
the kernel floods the group anyway: this passes with multicast snooping on as well). The lab image has
no multicast tools: the host's python3 runs inside the containers' network namespaces."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401

from .test_overlay import SLEEP, converge_ping, create_everywhere, ip_of, lab3  # noqa: F401

pytestmark = pytest.mark.lab

GROUP, PORT = "239.7.7.7", 7777

RECEIVE = r"""
import socket, sys, time
group, port, local, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
# join on the overlay interface: the default route (and so the default multicast interface) is eth1
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(local))
print("joined", flush=True)
deadline = time.monotonic() + seconds
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, (source, _) = s.recvfrom(2048)
    except TimeoutError:
        break
    print(data.decode(), source, flush=True)
"""

SEND = r"""
import socket, sys, time
group, port, local, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for n in range(count):
    s.sendto(f"hello-{n}".encode(), (group, port))
    time.sleep(0.2)
"""


def in_container(h, container: str, script: str, *args: str) -> list[str]:
    """Command that runs ``script`` with the host's python3 in the container's network namespace."""
    sandbox = h.docker("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", container).stdout.strip()
    # /var/run is a symlink to /run, which /proc/<pid>/root would resolve in our namespace, not the host's
    sandbox = sandbox.replace("/var/run/", "/run/", 1)
    return ["nsenter", f"--net={h.host_path(sandbox)}", sys.executable, "-c", script, *args]


def receiver(h, container: str, network: str, seconds: float) -> subprocess.Popen[str]:
    cmd = in_container(h, container, RECEIVE, GROUP, str(PORT), ip_of(h, container, network), str(seconds))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    if proc.stdout.readline().strip() != "joined":
        raise AssertionError(f"receiver in {container}: {proc.stderr.read()}")
    return proc


def test_multicast_reaches_two_other_hosts_not_another_network(lab3):  # noqa: F811
    h1, h2, h3 = lab3.hosts
    create_everywhere(lab3, "mc", "--subnet", "10.61.0.0/24")
    create_everywhere(lab3, "other", "--subnet", "10.62.0.0/24")
    for h, name, network in ((h2, "r2", "mc"), (h3, "r3", "mc"), (h2, "x2", "other"), (h3, "x3", "other")):
        h.docker("run", "-d", "--name", name, "--network", network, lab3.image, *SLEEP)
    receivers = {name: receiver(h, name, net, 60) for h, name, net in ((h2, "r2", "mc"), (h3, "r3", "mc"))}
    receivers.update({name: receiver(h, name, "other", 60) for h, name in ((h2, "x2"), (h3, "x3"))})
    time.sleep(3)  # their unsolicited IGMP reports are over before h1 has anything on mc
    h1.docker("run", "-d", "--name", "r1", "--network", "mc", lab3.image, *SLEEP)
    h1.docker("run", "-d", "--name", "s1", "--network", "mc", lab3.image, *SLEEP)
    for h, name in ((h2, "r2"), (h3, "r3")):
        converge_ping(h1, "s1", ip_of(h, name, "mc"))
    receivers["r1"] = receiver(h1, "r1", "mc", 60)
    sender = ip_of(h1, "s1", "mc")
    started = time.monotonic()
    subprocess.run(in_container(h1, "s1", SEND, GROUP, str(PORT), sender, "10"), check=True, timeout=30)
    got: dict[str, list[str]] = {}
    for name, proc in receivers.items():
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        got[name] = [line for line in out.splitlines() if line.endswith(f" {sender}")]
    print(
        f"10 datagrams in {time.monotonic() - started:.1f} s; received:", {k: len(v) for k, v in got.items()}
    )
    for name in ("r1", "r2", "r3"):
        assert len(got[name]) >= 8, (name, got)  # UDP: allow a lost datagram or two
        assert got[name][0].startswith("hello-")
    assert got["x2"] == [] and got["x3"] == [], got
