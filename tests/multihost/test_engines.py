"""The session's Docker engine (PYOVERLAY_ENGINE: the system's 20.10, or 26/28 from scripts/fetch-engine.sh).

Also pins down how Docker's embedded DNS (127.0.0.11) forwards a name it does not know to a daemon-level
``dns`` server: from the container's own namespace, so the server sees the container's address on the
interface of its default route (docker_gwbridge for a container only on pyoverlay networks).
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from tests.lab.engines import session_version
from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401
from tests.lab.system import wait_until

pytestmark = pytest.mark.lab

DNS_ADDR = "169.254.53.53"

# A UDP DNS server that answers NXDOMAIN and logs each query as "<qname> <source ip> <interface>".
_DNS_LISTENER = r"""
import socket, struct, sys
PKTINFO = 8  # IP_PKTINFO
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_IP, PKTINFO, 1)
s.bind(("0.0.0.0", 53))
log = open(sys.argv[1], "a", buffering=1)
log.write("ready\n")
while True:
    data, anc, _, src = s.recvmsg(4096, 256)
    info = next(b for lv, k, b in anc if lv == socket.SOL_IP and k == PKTINFO)
    ifindex, _, dst = struct.unpack("I4s4s", info[:12])
    i, labels = 12, []
    while data[i]:
        labels.append(data[i + 1 : i + 1 + data[i]].decode()); i += 1 + data[i]
    log.write(f"{'.'.join(labels)} {src[0]} {socket.if_indextoname(ifindex)}\n")
    flags = 0x8000 | (struct.unpack("!H", data[2:4])[0] & 0x0100) | 0x0080 | 3
    reply = data[:2] + struct.pack("!H", flags) + data[4:6] + bytes(6) + data[12 : i + 5]
    # Answer from the address asked, not the route's source address, or the client drops the reply.
    s.sendmsg([reply], [(socket.SOL_IP, PKTINFO, struct.pack("I4s4s", 0, dst, bytes(4)))], 0, src)
"""


def ip_of(h, container: str, network: str) -> str:
    out = h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
    return json.loads(out)[network]["IPAddress"]


def test_lab_runs_the_session_engine(make_lab):  # noqa: F811
    """PYOVERLAY_ENGINE (scripts/test.sh's engine passes) reaches every host's dockerd and client."""
    start = time.monotonic()
    lab = make_lab(2, etcd=False)
    up = time.monotonic() - start
    want = session_version()
    for h in lab.hosts:
        versions = h.docker("version", "--format", "{{.Client.Version}} {{.Server.Version}}").stdout
        client, daemon = versions.split()
        print(f"{h.name}: engine {h.engine.label}, client {client}, daemon {daemon}, lab up in {up:.1f}s")
        assert h.engine.label == (want or "system")
        major, minor = h.engine.release  # from that engine's dockerd --version
        assert daemon.startswith(f"{major}.{minor}."), (daemon, h.engine)
        if want is not None:  # the fetched engine's own client, not the system's 20.10 one
            assert daemon.startswith(f"{want}.") and client.startswith(f"{want}."), (client, daemon)
        # Docker's bridge rules (docker0's) sit in the chain Engine.forward_chain names (28: DOCKER-FORWARD)
        chain = h.engine.forward_chain
        forward = h.run(["iptables", "-w", "-S", "FORWARD"]).stdout
        rules = h.run(["iptables", "-w", "-S", chain]).stdout
        print(f"{h.name}: iptables -S {chain}\n{rules}")
        assert "docker0" in rules, rules
        if chain != "FORWARD":
            assert f"-j {chain}" in forward and "docker0" not in forward, forward


def test_embedded_dns_forwards_from_the_container_gwbridge_address(make_lab, tmp_path):  # noqa: F811
    lab = make_lab(1, etcd=False, dockerd_args=[f"--dns={DNS_ADDR}"])
    (h1,) = lab.hosts
    # The daemon-level DNS server on a port-less bridge (no dummy module on every machine) in the host.
    for cmd in ("link add dns0 type bridge", f"addr add {DNS_ADDR}/32 dev dns0", "link set dns0 up"):
        h1.run(["ip", *cmd.split()])
    log = tmp_path / "dns-queries.log"
    log.touch()
    listener = h1.popen([sys.executable, "-c", _DNS_LISTENER, str(log)])
    try:
        wait_until(lambda: "ready" in log.read_text(), 10, "DNS listener")
        lab.start_agents()
        h1.create_network("ov", "--subnet", "10.60.0.0/24")
        h1.docker("run", "-d", "--init", "--net", "ov", "--name", "client", lab.image, "sleep", "600")
        out = h1.docker("exec", "client", "nslookup", "not-known.example", check=False)
        assert "NXDOMAIN" in out.stdout, out  # the embedded DNS forwarded and relayed the answer
    finally:
        listener.kill()
        listener.wait()
    cid = h1.docker("inspect", "-f", "{{.Id}}", "client").stdout.strip()
    gateway = json.loads(h1.docker("network", "inspect", "docker_gwbridge").stdout)[0]["Containers"][cid]
    queries = re.findall(r"^not-known\.example (\S+) (\S+)$", log.read_text(), re.M)
    print(f"engine {h1.engine.label}: queries from {queries}, container overlay {ip_of(h1, 'client', 'ov')}")
    assert queries
    assert set(queries) == {(gateway["IPv4Address"].split("/")[0], "docker_gwbridge")}
