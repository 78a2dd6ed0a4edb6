"""Self-test of the lab: underlay, per-host dockerds, per-host plugin dirs, and a teardown that leaves
nothing behind. The agent here is a stand-in answering the plugin protocol, not pyoverlay."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .lab import REPO, Lab
from .system import netns_inode, pids_in_namespaces
from .teardown import RUN_ROOT, cleanup, cleanup_stale

pytestmark = pytest.mark.lab

ROOT_DOCKER = ["/usr/bin/docker", "-H", "unix:///var/run/docker.sock"]

# A minimal remote network driver on $SOCKET; it records its environment in $STATE_DIR/env.json.
STAND_IN_AGENT = r"""
import http.server, json, os, socketserver
path = os.environ["SOCKET"]
if os.path.exists(path):
    os.unlink(path)
with open(os.path.join(os.environ["STATE_DIR"], "env.json"), "w") as f:
    json.dump(dict(os.environ), f)
ANSWERS = {"/Plugin.Activate": {"Implements": ["NetworkDriver"]},
           "/NetworkDriver.GetCapabilities": {"Scope": "local", "ConnectivityScope": "global"}}
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(ANSWERS.get(self.path, {})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        print("stand-in:", self.path, flush=True)
class Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    def get_request(self):
        sock, _ = super().get_request()
        return sock, ("unix", 0)  # BaseHTTPRequestHandler wants a (host, port) address
print("stand-in: listening on", path, flush=True)
Server(path, Handler).serve_forever()
"""
STAND_IN = [sys.executable, "-u", "-c", STAND_IN_AGENT]


def lab_pids(lab: Lab) -> set[int]:
    """Every live process of the lab: dockerd, containerd, shims, containers, agents, anchors, etcd."""
    nets = {netns_inode(ns) for ns in [lab.underlay_netns, *(h.netns for h in lab.hosts)]}
    return pids_in_namespaces({i for i in nets if i is not None})


def assert_nothing_left(name: str, workdir: Path, pids: set[int]) -> None:
    """No namespace, link, mount, process, cgroup or directory of lab ``name`` remains."""
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(f"{name}-")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert not re.findall(r"^\d+: (h\d+|br0)[@:]", links, re.M), links
    mountinfo = Path("/proc/self/mountinfo").read_text()
    for trace in (str(RUN_ROOT / name), str(workdir), f"/run/netns/{name}-"):
        assert trace not in mountinfo
    alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and _state(pid) != "Z"]
    assert not alive, [Path(f"/proc/{p}/cmdline").read_bytes() for p in alive]
    for root in Path("/sys/fs/cgroup").iterdir():
        assert not list(root.glob(f"{name}-h*")), root
    assert not (RUN_ROOT / name).exists()
    assert not workdir.exists() or not list(workdir.glob("h*"))
    subprocess.run([*ROOT_DOCKER, "version"], check=True, capture_output=True)  # the root daemon is fine


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_two_hosts_underlay_docker_and_plugin_dirs(make_lab) -> None:
    lab = make_lab(2, mtu=9000)
    h1, h2 = lab.hosts
    print(f"\n2-host lab (mtu 9000, etcd) up in {lab.timings['up']:.1f}s")

    # Underlay: full-size DF packets pass, one byte more does not.
    assert "IP length 9000" in h1.ping(h2.address, 9000 - 28).stdout
    too_big = h1.ping(h2.address, 9000 - 28 + 1, check=False)
    assert too_big.returncode != 0 and "too long" in too_big.stdout.lower(), too_big.stdout
    assert h2.run(["ip", "route", "show", "default"]).stdout.startswith(f"default via {lab.underlay_address}")
    assert "mtu 9000" in h2.run(["ip", "link", "show", "eth0"]).stdout
    # A fresh host's docker: FORWARD policy DROP.
    assert h1.run(["iptables", "-S", "FORWARD"]).stdout.splitlines()[0] == "-P FORWARD DROP"

    # Each dockerd: a container on its default bridge reaches the other host's underlay address.
    for here, there in ((h1, h2), (h2, h1)):
        out = here.docker("run", "--rm", lab.image, "ping", "-c", "1", "-W", "3", there.address).stdout
        assert "1 packets received" in out
        assert "bridge" in here.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        assert here.client().version()["Version"].startswith("20.10")
    assert "iperf 3" in h1.docker("run", "--rm", lab.image, "iperf3", "--version").stdout
    # --init: busybox sleep as PID 1 ignores SIGTERM, and a dockerd restart would wait 10 s for it.
    h1.docker("run", "-d", "--init", "--name", "only-on-h1", lab.image, "sleep", "600")
    assert "only-on-h1" not in h2.docker("ps", "-a", "--format", "{{.Names}}").stdout

    # etcd on the underlay, reachable from the hosts.
    probe = f"import urllib.request as u; print(u.urlopen('{lab.etcd_endpoint}/health').read().decode())"
    assert '"health":"true"' in h2.run([sys.executable, "-c", probe]).stdout.replace(" ", "")

    # Plugin dirs are per host: h1's files are seen by h1 only, never by h2 or the root namespace.
    (h1.plugin_socket_dir / "marker").write_text("h1")
    (h1.plugin_spec_dir / "marker.spec").write_text("unix:///nowhere.sock")
    assert h1.run(["cat", "/run/docker/plugins/marker"]).stdout == "h1"
    assert h1.run(["test", "-e", "/etc/docker/plugins/marker.spec"], check=False).returncode == 0
    for path in ("/run/docker/plugins/marker", "/etc/docker/plugins/marker.spec"):
        assert h2.run(["test", "-e", path], check=False).returncode == 1
        assert not os.path.exists(path)

    # An agent inside h1: its env, its namespaces, and h1's dockerd (only) discovers its socket.
    h1.start_agent(command=STAND_IN)
    env = json.loads((h1.workdir / "state" / "env.json").read_text())
    assert env["SOCKET"] == str(h1.plugin_socket_dir / "pyoverlay.sock")
    assert (env["ADVERTISE_ADDR"], env["ETCD_ENDPOINTS"], env["DOCKER_HOST"]) == (
        h1.address,
        lab.etcd_endpoint,
        h1.docker_host,
    )
    assert env["STATE_DIR"] == str(h1.workdir / "state") and env["LOG_LEVEL"] == "debug"
    assert os.stat(f"/proc/{h1.agent.pid}/ns/net").st_ino == netns_inode(h1.netns)
    assert os.stat(f"/proc/{h1.agent.pid}/ns/mnt").st_ino == os.stat(f"/proc/{h1.anchor_pid}/ns/mnt").st_ino
    h1.docker("network", "create", "-d", "pyoverlay", "n1")
    assert "/NetworkDriver.CreateNetwork" in h1.agent_log()
    # (Not `docker network create -d pyoverlay` on h2: dockerd retries a missing plugin for 15 s.)
    assert h2.run(["test", "-e", "/run/docker/plugins/pyoverlay.sock"], check=False).returncode == 1

    # dockerd restarts in the same mount namespace and still finds the agent; the agent survives a kill.
    h1.restart_dockerd()
    h1.docker("network", "create", "-d", "pyoverlay", "n2")
    h1.kill_agent()
    h1.start_agent(command=STAND_IN)
    h1.docker("network", "rm", "n1", "n2")


def test_down_leaves_nothing_behind(make_lab) -> None:
    lab = make_lab(3)
    up = lab.timings["up"]
    lab.start_agents(command=STAND_IN)
    container = lab.hosts[0].docker("run", "-d", "--restart=always", lab.image, "sleep", "600").stdout.strip()
    container_pid = int(lab.hosts[0].docker("inspect", "-f", "{{.State.Pid}}", container).stdout)
    pids = lab_pids(lab)
    assert container_pid in pids and len(pids) >= 3 * 4 + 1  # per host: anchor, dockerd, containerd, agent
    lab.down()
    print(f"\n3-host lab: up {up:.1f}s, down {lab.timings['down']:.1f}s")
    assert up < 30
    assert_nothing_left(lab.name, lab.workdir, pids)


def test_single_host_without_etcd_and_cleanup_by_name(make_lab) -> None:
    lab = make_lab(1, etcd=False)
    h1 = lab.hosts[0]
    assert lab.etcd_endpoint is None
    h1.start_agent(command=STAND_IN)
    assert json.loads((h1.workdir / "state" / "env.json").read_text())["ETCD_ENDPOINTS"] == ""
    h1.docker("run", "-d", lab.image, "sleep", "600")
    pids = lab_pids(lab)
    cleanup(lab.name)  # what up() does for a crashed run of the same name
    cleanup(lab.name)  # idempotent
    assert_nothing_left(lab.name, lab.workdir, pids)


def test_lab_of_a_killed_process_is_swept(lab_image_tar: Path, tmp_path: Path) -> None:
    name = f"k{os.getpid()}"
    child = f"""
import os, signal
from pathlib import Path
from tests.lab import Lab
lab = Lab(1, {name!r}, etcd=True, workdir=Path({str(tmp_path)!r}), image_tar=Path({str(lab_image_tar)!r}))
lab.up()
lab.hosts[0].docker("run", "-d", lab.image, "sleep", "600")
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run(
        [sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr
    nets = {netns_inode(f"{name}-h1"), netns_inode(f"{name}-ul")}
    pids = pids_in_namespaces({i for i in nets if i is not None})
    assert len(pids) >= 5
    start = time.monotonic()
    assert name in cleanup_stale()
    print(f"\nstale lab swept in {time.monotonic() - start:.1f}s")
    assert_nothing_left(name, tmp_path, pids)
