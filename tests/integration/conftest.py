"""An agent running for real (``pyoverlay serve``) in a throwaway network namespace, on either store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore import Store, open_store
from tests.etcd_server import EtcdServer
from tests.plugin_client import PluginClient

REPO = Path(__file__).resolve().parents[2]
PYOVERLAY = str(Path(sys.executable).parent / "pyoverlay")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


ETCD_ADDRESS = "10.97.0.1"  # on the root namespace's lo, routed from every test namespace


class NetnsHost:
    """A namespace whose 'underlay' is a veth to the root namespace, holding the default route."""

    def __init__(self, workdir: Path, mtu: int = 1500, subnet: int = 98) -> None:
        """``subnet``: its underlay is 10.<subnet>.0.0/24, so that two hosts can run at once."""
        self.name = f"pyo-it-{uuid.uuid4().hex[:6]}"
        self.address = f"10.{subnet}.0.1"
        self.workdir = workdir
        # where its agent mounts each network's namespace: its own, as a real host's /run/netns is
        self.netns_dir = f"/run/pyoverlay-it/{self.name}"
        os.makedirs("/run/pyoverlay-it", exist_ok=True)
        uplink = self.name.replace("pyo-it-", "pyoit")
        ip("netns", "add", self.name)
        ip("-n", self.name, "link", "set", "lo", "up")
        ip("link", "add", uplink, "mtu", str(mtu), "type", "veth", "peer", "name", "ul0", "netns", self.name)
        ip("addr", "add", f"10.{subnet}.0.254/24", "dev", uplink)
        ip("link", "set", uplink, "up")
        ip("-n", self.name, "link", "set", "ul0", "mtu", str(mtu))
        ip("-n", self.name, "addr", "add", f"{self.address}/24", "dev", "ul0")
        ip("-n", self.name, "link", "set", "ul0", "up")
        ip("-n", self.name, "route", "add", "default", "via", f"10.{subnet}.0.254")

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.name}", *cmd], check=check, capture_output=True, text=True
        )

    def links(self) -> set[str]:
        return {line.split()[0].split("@")[0] for line in ip("-n", self.name, "-br", "link").splitlines()}

    def mtu(self, ifname: str) -> int:
        words = ip("-n", self.name, "-o", "link", "show", "dev", ifname).split()
        return int(words[words.index("mtu") + 1])

    def forward_rules(self) -> list[str]:
        rules = self.run("iptables", "-w", "-S", "FORWARD").stdout.splitlines()
        return [r for r in rules if "pyoverlay" in r]

    def network_namespaces(self) -> list[str]:
        """The networks' namespaces its agent keeps (pyoverlay-<vni>)."""
        try:
            return sorted(os.listdir(self.netns_dir))
        except FileNotFoundError:
            return []

    def network_links(self) -> set[str]:
        """Every link in the networks' namespaces."""
        names: set[str] = set()
        for netns in self.network_namespaces():
            out = subprocess.run(
                ["nsenter", f"--net={self.netns_dir}/{netns}", "ip", "-br", "link"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            names |= {line.split()[0].split("@")[0] for line in out.splitlines()}
        return names

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)
        for netns in self.network_namespaces():
            subprocess.run(["umount", "-l", f"{self.netns_dir}/{netns}"], capture_output=True, check=False)
            os.unlink(f"{self.netns_dir}/{netns}")
        if os.path.isdir(self.netns_dir):
            # pyroute2, as iproute2, makes the directory a shared mount of itself
            subprocess.run(["umount", "-l", self.netns_dir], capture_output=True, check=False)
            os.rmdir(self.netns_dir)


class AgentProcess:
    def __init__(self, host: NetnsHost, etcd: str = "", env: dict[str, str] | None = None) -> None:
        self.host = host
        self.etcd = etcd
        self.env = env or {}  # more settings (ETCD_CA_CERT, HOST_TTL, …)
        self.socket = str(host.workdir / "pyoverlay.sock")
        self.state_dir = str(host.workdir / "state")
        self.log = host.workdir / "agent.log"
        self.client = PluginClient(self.socket, timeout=30)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        env = {
            **os.environ,
            "SOCKET": self.socket,
            "STATE_DIR": self.state_dir,
            "ETCD_ENDPOINTS": self.etcd,
            "LOG_LEVEL": "debug",
            "NETNS_DIR": self.host.netns_dir,
            **self.env,
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.host.name}", PYOVERLAY, "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.client.wait_ready()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=15)
        self.proc = None

    def store(self) -> Store:
        """A second view of the agent's store, for checking what it left behind."""
        return open_store([self.etcd] if self.etcd else [], self.state_dir)


@pytest.fixture
def netns_host(tmp_path: Path) -> Iterator[NetnsHost]:
    host = NetnsHost(tmp_path)
    try:
        yield host
    finally:
        host.close()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    subprocess.run(["ip", "addr", "del", f"{ETCD_ADDRESS}/32", "dev", "lo"], capture_output=True, check=False)
    ip("addr", "add", f"{ETCD_ADDRESS}/32", "dev", "lo")
    server = EtcdServer(host=ETCD_ADDRESS, data_dir=str(tmp_path_factory.mktemp("etcd")))
    server.start()
    try:
        yield server
    finally:
        server.close()
        ip("addr", "del", f"{ETCD_ADDRESS}/32", "dev", "lo")


@pytest.fixture(params=["embedded", "etcd"])
def agent(request: pytest.FixtureRequest, netns_host: NetnsHost) -> Iterator[AgentProcess]:
    """The agent on the embedded store, then on etcd (its own key prefix is wiped before each test)."""
    yield from agent_on_store(request, netns_host)


def agent_on_store(
    request: pytest.FixtureRequest, netns_host: NetnsHost, stop_signal: int = signal.SIGTERM
) -> Iterator[AgentProcess]:
    """An agent on the store the fixture's param names, stopped (and its log shown) after the test."""
    etcd = ""
    if request.param == "etcd":
        server: EtcdServer = request.getfixturevalue("etcd_server")
        server.etcdctl("del", "--prefix", "/pyoverlay/")
        etcd = server.endpoint
    proc = AgentProcess(netns_host, etcd)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop(stop_signal)
        print(proc.log.read_text()[-4000:])
