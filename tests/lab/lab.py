"""A multi-host Docker lab on one machine: an underlay bridge namespace, N host namespaces each with
its own dockerd (and, on request, a pyoverlay agent), and optionally etcd on the underlay."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from driver.neighbour_table import ensure_neighbour_table
from plugin.settings import Settings

from .engines import engine as engine_of
from .host import LabHost
from .image import IMAGE_TAG, build_image_tar
from .system import sh, wait_until
from .teardown import RUN_ROOT, STATE_KIND, cleanup, remove_workdir_content

REPO = Path(__file__).resolve().parents[2]
ETCD = "/usr/bin/etcd"
_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,11}")


class LabUnavailable(RuntimeError):
    """This machine cannot run the lab (not root, or a tool is missing); tests skip on it."""


def default_agent_command() -> list[str]:
    """The real agent: the repository venv's ``pyoverlay serve``."""
    return [str(REPO / ".venv" / "bin" / "pyoverlay"), "serve"]


class Lab:
    """N hosts as namespaces with their own dockerd, joined by an underlay bridge (see docs/lab.md)."""

    def __init__(
        self,
        n_hosts: int = 2,
        name: str = "pyolab",
        mtu: int = 1500,
        etcd: bool = True,
        workdir: Path | None = None,
        *,
        underlay: str = "10.99.0.0/24",
        docker_pools: str = "10.128.0.0/12",
        image_tar: Path | None = None,
        agent_command: Sequence[str] | None = None,
        keep: bool = False,
        detached: bool = False,
        dockerd_args: Sequence[str] = (),
        daemon_json: Mapping[str, object] | None = None,
        engine: str | None | Sequence[str | None] = None,
        etcd_members: int = 1,
    ) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"lab name {name!r}: 1-12 of [a-z0-9], starting with a letter")
        self.name = name
        self.mtu = mtu
        self.underlay = ipaddress.IPv4Network(underlay)
        if not 1 <= n_hosts <= self.underlay.num_addresses - 3:
            raise ValueError(f"{n_hosts} hosts do not fit in {underlay}")
        self._pools = list(ipaddress.IPv4Network(docker_pools).subnets(new_prefix=16))
        if n_hosts > len(self._pools):
            raise ValueError(f"{docker_pools} has no /16 for each of {n_hosts} hosts")
        self.underlay_address = str(self.underlay[-2])  # gateway and etcd address, e.g. 10.99.0.254
        self.underlay_netns = f"{name}-ul"
        self.run_dir = RUN_ROOT / name
        self._owned_workdir = workdir is None  # then a temp dir, made at up() and removed at down()
        self.workdir = Path(workdir) if workdir else Path(tempfile.gettempdir()) / f"{name}-unset"
        self.with_etcd = etcd
        if etcd_members < 1:
            raise ValueError(f"etcd_members: at least 1, got {etcd_members}")
        self.etcd_members = etcd_members  # >1: a cluster on the underlay address, one port pair each
        self.image = IMAGE_TAG
        self.image_tar = image_tar
        self.agent_command = list(agent_command) if agent_command else default_agent_command()
        self.keep = keep
        self.dockerd_args = list(dockerd_args)  # added to every host's dockerd command line
        self.daemon_json = dict(daemon_json or {})  # every host's daemon.json
        self.detached = detached  # outlives this process (CLI): never swept as stale
        engines = [engine] * n_hosts if engine is None or isinstance(engine, str) else list(engine)
        if len(engines) != n_hosts:
            raise ValueError(f"engine: one per host ({n_hosts}), got {engines}")
        self.hosts = [LabHost(self, i, str(self.underlay[i]), engines[i - 1]) for i in range(1, n_hosts + 1)]
        self.etcds: list[subprocess.Popen[bytes] | None] = [None] * etcd_members
        self.timings: dict[str, float] = {}

    @property
    def etcd_endpoint(self) -> str | None:
        """The (first member's) etcd client URL every host reaches over the underlay, or None without etcd."""
        return f"http://{self.underlay_address}:2379" if self.with_etcd else None

    @property
    def etcd_endpoints(self) -> list[str]:
        """Every etcd member's client URL (what agents are given); empty without etcd."""
        if not self.with_etcd:
            return []
        return [f"http://{self.underlay_address}:{2379 + 2 * i}" for i in range(self.etcd_members)]

    @property
    def etcd(self) -> subprocess.Popen[bytes] | None:
        """The first etcd member's process."""
        return self.etcds[0]

    def docker_pool(self, index: int) -> ipaddress.IPv4Network:
        """The /16 host ``index`` (1-based) uses for docker0 and its default address pool."""
        return self._pools[index - 1]

    def host(self, name: str) -> LabHost:
        """A host by name ("h1")."""
        return next(h for h in self.hosts if h.name == name)

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    # --- bring up ---------------------------------------------------------------------------------
    def up(self) -> Lab:
        """Clean leftovers of an earlier run with this name, then build the whole lab; tear down on error."""
        start = time.monotonic()
        check_machine(self.with_etcd, [h.engine.label for h in self.hosts])
        cleanup(self.name)
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        self.timings["up"] = time.monotonic() - start
        return self

    def _up(self) -> None:
        self.run_dir.mkdir(parents=True)
        if self._owned_workdir:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_state()
        tarball = self.image_tar or build_image_tar(self.workdir / "image-cache")
        self._build_underlay()
        if self.with_etcd:
            self._start_etcd()
        for h in self.hosts:
            h.start_anchor()
        for h in self.hosts:
            h.wait_anchor()
        for h in self.hosts:  # dockerds start in parallel: most of the lab's start-up time
            h.start_dockerd(wait=False)
        for h in self.hosts:
            h.wait_dockerd()
        imports = [(h, h.import_image(tarball)) for h in self.hosts]
        for h, proc in imports:
            _, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{h.name}: docker import failed: {err.strip()}")
        if self.with_etcd:
            self._wait_etcd()

    def _write_state(self) -> None:
        state = {
            "kind": STATE_KIND,
            "owner_pid": None if self.detached else os.getpid(),
            "workdir": str(self.workdir),
            "owned_workdir": self._owned_workdir,
            "keep": self.keep,
            "hosts": [h.name for h in self.hosts],
            "etcd_endpoint": self.etcd_endpoint,
            "underlay": str(self.underlay),
            "hosts_addresses": {h.name: h.address for h in self.hosts},
            "engines": {h.name: h.engine.label for h in self.hosts},
        }
        (self.run_dir / "lab.json").write_text(json.dumps(state, indent=1) + "\n")

    def _build_underlay(self) -> None:
        ul, mtu, plen = self.underlay_netns, self.mtu, self.underlay.prefixlen
        for ns in [ul, *(h.netns for h in self.hosts)]:
            sh(["ip", "netns", "add", ns])
        ul_batch = [
            f"link add br0 mtu {mtu} type bridge",
            "link set lo up",
            "link set br0 up",
            f"addr add {self.underlay_address}/{plen} dev br0",
        ]
        for h in self.hosts:
            # Both ends are created directly in their namespaces: nothing ever sits in the root ns.
            ends = f"name eth0 mtu {mtu} netns {h.netns} type veth peer name {h.name} mtu {mtu} netns {ul}"
            sh(["ip", "link", "add", *ends.split()])
            ul_batch += [f"link set {h.name} master br0", f"link set {h.name} up"]
            _ip_batch(
                h.netns,
                [
                    "link set lo up",
                    "link set eth0 up",
                    f"addr add {h.address}/{plen} dev eth0",
                    f"route add default via {self.underlay_address} dev eth0",
                ],
            )
            # ip_forward is inherited from the root ns (already 1 there): reset it so dockerd enables it
            # itself and, as on a fresh host, sets the FORWARD policy to DROP.
            _sysctl(h.netns, {"net/ipv4/ip_forward": "0"})
            # IPv6 on, as on a fresh host (a new netns takes the kernel's defaults, or the root ns's with
            # devconf_inherit_init_net): pyoverlay's dual-stack networks need it on bridges and veths
            _sysctl(h.netns, {f"net/ipv6/conf/{c}/disable_ipv6": "0" for c in ("all", "default")})
        _ip_batch(ul, [*ul_batch, f"link set br0 mtu {mtu}"])
        # The underlay is a plain wire: no iptables on bridged frames (br_netfilter is on per netns).
        _sysctl(ul, {f"net/bridge/bridge-nf-call-{t}": "0" for t in ("iptables", "ip6tables", "arptables")})
        # One kernel, one neighbour table, for all the lab's hosts: what each agent raises on a real host
        # (in its initial namespace, which lab agents do not see), times the hosts.
        ensure_neighbour_table(len(self.hosts) * Settings().neigh_table_size)

    def _start_etcd(self) -> None:
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        for i in range(self.etcd_members):
            self.start_etcd(i)

    def _etcd_member(self, i: int) -> tuple[str, Path, int]:
        """(name, data dir, client port) of member i; one member keeps the historical name and dir."""
        if self.etcd_members == 1:
            return "lab", self.workdir / "etcd", 2379
        return f"lab{i}", self.workdir / "etcd" / f"lab{i}", 2379 + 2 * i

    def start_etcd(self, member: int = 0) -> None:
        """Start (or restart, keeping its data) etcd member ``member``; see wait_etcd()."""
        if (proc := self.etcds[member]) is not None and proc.poll() is None:
            raise RuntimeError(f"etcd member {member} already running")
        a = self.underlay_address
        name, data, port = self._etcd_member(member)
        cluster = ",".join(
            f"{n}=http://127.0.0.1:{p + 1}" for n, _, p in map(self._etcd_member, range(self.etcd_members))
        )
        cmd = [
            "nsenter",
            f"--net=/run/netns/{self.underlay_netns}",
            "--",
            ETCD,
            f"--name={name}",
            f"--data-dir={data}",
            f"--listen-client-urls=http://{a}:{port},http://127.0.0.1:{port}",
            f"--advertise-client-urls=http://{a}:{port}",
            f"--listen-peer-urls=http://127.0.0.1:{port + 1}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{port + 1}",
            f"--initial-cluster={cluster}",
        ]
        log = open(self.workdir / "etcd.log", "ab")  # noqa: SIM115 - owned by the child from here
        self.etcds[member] = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def stop_etcd(self, member: int = 0, sig: int = signal.SIGKILL) -> None:
        """Stop etcd member ``member`` (SIGKILL by default: a crash) and reap it."""
        proc = self.etcds[member]
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            proc.wait(30)
            self.etcds[member] = None

    def wait_etcd(self, timeout: float = 30) -> None:
        """Wait until every running member reports healthy (for a cluster: it has a leader)."""
        for i, proc in enumerate(self.etcds):
            if proc is None:
                continue
            url = self.etcd_endpoints[i]
            probe = f"import urllib.request as u; u.urlopen('{url}/health', timeout=1).read()"
            wait_until(
                lambda probe=probe: (
                    self.underlay_run([sys.executable, "-c", probe], check=False).returncode == 0
                ),
                timeout,
                f"etcd member {i}",
                proc,
                self.workdir / "etcd.log",
            )

    def _wait_etcd(self) -> None:
        self.wait_etcd()

    def start_agents(self, timeout: float = 20, **kwargs: object) -> None:
        """Start every host's agent (``kwargs`` as for LabHost.start_agent); wait for all, in parallel."""
        for h in self.hosts:
            h.start_agent(wait=False, **kwargs)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout
        for h in self.hosts:
            h.wait_agent(max(1.0, deadline - time.monotonic()))

    # --- use --------------------------------------------------------------------------------------
    def underlay_run(
        self, cmd: Sequence[str], *, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the underlay namespace (where etcd listens); text output captured."""
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.underlay_netns}", "--", *cmd],
            check=check,
            timeout=timeout,
            capture_output=True,
            text=True,
        )

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """etcdctl (v3 API) against the lab's etcd, e.g. ``lab.etcdctl("get", "--prefix", "/pyoverlay")``."""
        assert self.etcd_endpoint, "lab has no etcd"
        return self.underlay_run(
            ["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={','.join(self.etcd_endpoints)}", *args],
            check=check,
        )

    # --- tear down --------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop agents gracefully, then remove everything (processes, mounts, namespaces, cgroups, dirs)."""
        start = time.monotonic()
        for h in self.hosts:
            if h._client is not None:
                h._client.close()
                h._client = None
            with contextlib.suppress(Exception):  # teardown goes on regardless
                h.stop_agent(timeout=5)
        cleanup(self.name)
        for proc in [*self.etcds, *(p for h in self.hosts for p in (h.anchor, h.dockerd, h.agent))]:
            if proc is not None:
                proc.wait(10)  # dead already: reap it
        for h in self.hosts:
            h.anchor = h.dockerd = h.agent = None
            h.anchor_pid = None
        self.etcds = [None] * self.etcd_members
        if not self.keep:
            if self._owned_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                remove_workdir_content(self.workdir, [h.name for h in self.hosts])
        self.timings["down"] = time.monotonic() - start


def check_machine(etcd: bool = True, engines: Sequence[str | None] = (None,)) -> None:
    """Raise LabUnavailable, saying why, if this machine cannot run a lab (with these Docker engines: a
    version, "system", or None for the session's)."""
    if os.geteuid() != 0:
        raise LabUnavailable("the lab needs root (network, mount namespaces, dockerd)")
    for version in dict.fromkeys(engines):
        reason = engine_of(version).missing()
        if reason:
            raise LabUnavailable(reason)
    tools = ["ip", "nsenter", "unshare", "findmnt", "mountpoint", "iptables", "runc", "/bin/busybox"]
    if etcd:
        tools.append(ETCD)
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise LabUnavailable(f"missing tools: {', '.join(missing)}")
    if not Path("/proc/sys/net/bridge").is_dir():
        # br_netfilter: dockerd's bridge isolation and the FORWARD DROP behaviour depend on it.
        if shutil.which("modprobe"):
            sh(["modprobe", "br_netfilter"], check=False)
        if not Path("/proc/sys/net/bridge").is_dir():
            raise LabUnavailable("br_netfilter is not available (modprobe br_netfilter)")


def _ip_batch(netns: str, commands: Sequence[str]) -> None:
    proc = subprocess.run(
        ["ip", "-n", netns, "-batch", "-"], input="\n".join(commands) + "\n", capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ip -n {netns} -batch failed: {proc.stderr.strip()}")


def _sysctl(netns: str, values: Mapping[str, str]) -> None:
    script = "; ".join(f"echo {v} > /proc/sys/{k}" for k, v in values.items())
    sh(["nsenter", f"--net=/run/netns/{netns}", "--", "sh", "-ec", script])
