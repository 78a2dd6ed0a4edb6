"""One lab host: a network namespace plus a private mount namespace, its own dockerd, and an agent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.plugin_client import unix_http

from .engines import SYSTEM_DOCKER, SYSTEM_DOCKERD, Engine, engine
from .image import IMAGE_TAG, IMPORT_CHANGES
from .system import DF_PING_SCRIPT, log_tail, terminate, wait_until

if TYPE_CHECKING:
    import docker

    from .lab import Lab

DOCKER = SYSTEM_DOCKER  # the 20.10 client; a host's own client is LabHost.engine.docker
DOCKERD = SYSTEM_DOCKERD

# Runs as PID "anchor" inside the host's netns, in a fresh private mount namespace, and then sleeps for
# the lifetime of the host so that dockerd restarts, the agent and `h.run` all share one mount namespace.
_ANCHOR_SCRIPT = r"""
set -e
S="$1"
exec 3<"$S" 4</sys/fs/cgroup
# Drop the copies of other mounts under /run and of other namespaces' nsfs files: they would pin
# the root dockerd's container namespaces and the other lab namespaces while this host lives.
findmnt -rn -o TARGET,FSTYPE | sort -r | while read -r t f; do
  case "$t" in
    /run/*|/var/lib/docker|/var/lib/docker/*) umount -l "$t" 2>/dev/null || true ;;
    *) if [ "$f" = nsfs ]; then umount -l "$t" 2>/dev/null || true; fi ;;
  esac
done
# A private /run, like a fresh host: dockerd's exec-root, /run/containerd (so no system containerd is
# found and shared) and the iptables lock are per host.
mount -t tmpfs -o mode=755 lab-run /run
mkdir -p "$S" /run/docker/plugins /run/lock
# /proc/self/fd: the host dir is hidden by the tmpfs now; mount must not canonicalize the magic link.
mount --no-canonicalize --bind /proc/self/fd/3 "$S"
# sysfs shows the interfaces of the netns that mounted it; keep the cgroup mounts dockerd needs.
mount -t sysfs sysfs /sys
mount --no-canonicalize --rbind /proc/self/fd/4 /sys/fs/cgroup
exec 3<&- 4<&-
mount --bind "$S/plugins" /run/docker/plugins
[ -d /etc/docker ] || mkdir -p /etc/docker
mount --bind "$S/etc-docker" /etc/docker
ln -s "$S/docker.sock" /run/docker.sock
# Shared like a systemd host's (in peer groups of this namespace only): a managed plugin's mounts in its
# rshared mounts (pyoverlay's networks' namespaces) must reach the host and outlive the plugin.
mount --make-rshared /
echo ready
exec sleep infinity </dev/null >/dev/null 2>&1
"""

# dockerd's plugin manager owns /run/docker/plugins; make sure the per-host bind is there on each start.
_DOCKERD_WRAPPER = (
    'mountpoint -q /run/docker/plugins || mount --bind "$S/plugins" /run/docker/plugins; exec "$@"'
)


class CommandFailed(subprocess.CalledProcessError):
    """A CalledProcessError whose message includes the command's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


class LabHost:
    """A lab host. Paths under ``run_dir`` are short (unix sockets) and the same in every namespace."""

    def __init__(self, lab: Lab, index: int, address: str, engine_version: str | None = None) -> None:
        self.lab = lab
        self.engine: Engine = engine(engine_version)  # read at each start_dockerd
        self.index = index
        self.name = f"h{index}"
        self.netns = f"{lab.name}-{self.name}"
        self.address = address
        self.run_dir = lab.run_dir / self.name
        self.docker_host = f"unix://{self.run_dir}/docker.sock"
        self.plugin_socket_dir = self.run_dir / "plugins"  # dockerd sees it as /run/docker/plugins
        self.plugin_spec_dir = self.run_dir / "etc-docker" / "plugins"  # seen as /etc/docker/plugins
        self.agent_socket = self.plugin_socket_dir / "pyoverlay.sock"
        self.cgroup_parent = f"/{self.netns}"
        self.anchor: subprocess.Popen[bytes] | None = None
        self.anchor_pid: int | None = None  # also set when attaching to a lab another process started
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self._client: docker.DockerClient | None = None

    @property
    def workdir(self) -> Path:
        """This host's directory under the lab workdir: docker data-root, agent state, logs."""
        return self.lab.workdir / self.name

    def __repr__(self) -> str:
        return f"<LabHost {self.name} {self.address} {self.docker_host}>"

    # --- namespaces -------------------------------------------------------------------------------
    def start_anchor(self) -> None:
        """Create the host's mount namespace (private /run, per-host plugin dirs). Call wait_anchor()."""
        for d in (self.plugin_socket_dir, self.plugin_spec_dir, self.workdir / "state"):
            d.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "daemon.json").write_text(json.dumps(self.lab.daemon_json) + "\n")
        cmd = [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            _ANCHOR_SCRIPT,
            "sh",
            str(self.run_dir),
        ]
        self.anchor = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )

    def wait_anchor(self) -> None:
        """Block until the anchor has set up the mounts; record its pid for crash clean-up."""
        assert self.anchor is not None and self.anchor.stdout is not None
        line = self.anchor.stdout.readline()
        if line.strip() != b"ready":
            err = self.anchor.stderr.read().decode(errors="replace") if self.anchor.stderr else ""
            raise RuntimeError(f"{self.name}: mount namespace setup failed: {err.strip()}")
        self.anchor.stdout.close()
        assert self.anchor.stderr is not None
        self.anchor.stderr.close()
        self.anchor_pid = self.anchor.pid
        (self.run_dir / "anchor.pid").write_text(f"{self.anchor_pid}\n")

    def nsenter(self, cwd: str | None = None) -> list[str]:
        """Command prefix that enters this host's network and mount namespaces."""
        assert self.anchor_pid is not None, "host is not up"
        ns = f"/proc/{self.anchor_pid}/ns"
        return ["nsenter", f"--net={ns}/net", f"--mount={ns}/mnt", *([f"--wd={cwd}"] if cwd else []), "--"]

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host (net + mount namespaces); text output captured."""
        proc = subprocess.run(
            [*self.nsenter(cwd), *cmd],
            timeout=timeout,
            input=input,
            env=None if env is None else dict(env),
            capture_output=True,
            text=True,
        )
        if check and proc.returncode != 0:
            raise CommandFailed(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def network_namespaces(self) -> list[str]:
        """Paths of the pyoverlay networks' namespaces here: the agent's (/run/netns/pyoverlay-<vni>) or
        a managed plugin's, in its state mount (NETNS_DIR in config.json)."""
        pattern = f"/run/netns/pyoverlay-* {self.workdir}/state/netns/pyoverlay-*"
        listing = self.run(["sh", "-c", f"ls -d {pattern} 2>/dev/null"], check=False).stdout
        return sorted(listing.split())

    def in_networks(self, cmd: Sequence[str]) -> str:
        """The output of cmd run in every network's namespace (e.g. ip neigh, bridge fdb), concatenated."""
        return "".join(
            self.run(["nsenter", f"--net={path}", *cmd]).stdout for path in self.network_namespaces()
        )

    def ping(
        self, dst: str, size: int = 56, timeout: float = 2, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """One ICMP echo with the DF bit set from this host, ``size`` payload bytes (MTU - 28 fills it)."""
        cmd = [sys.executable, "-c", DF_PING_SCRIPT, dst, str(size), str(timeout)]
        return self.run(cmd, check=check, timeout=timeout + 10)

    def popen(self, cmd: Sequence[str], cwd: str | None = None, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside the host; ``kwargs`` go to subprocess.Popen. Caller waits/kills it."""
        return subprocess.Popen([*self.nsenter(cwd), *cmd], **kwargs)

    def host_path(self, path: str) -> str:
        """A path as this host sees it (e.g. a container's SandboxKey), reachable from the root ns."""
        assert self.anchor_pid is not None, "host is not up"
        return f"/proc/{self.anchor_pid}/root{path}"

    # --- dockerd ----------------------------------------------------------------------------------
    def start_dockerd(self, wait: bool = True, extra_args: Sequence[str] = ()) -> None:
        """Start this host's dockerd (own data-root, socket, pools, cgroup parent; default iptables)."""
        if self.dockerd is not None and self.dockerd.poll() is None:
            raise RuntimeError(f"{self.name}: dockerd already running")
        pool = self.lab.docker_pool(self.index)
        args = [
            self.engine.dockerd,
            f"--data-root={self.workdir / 'docker'}",
            "--exec-root=/var/run/docker",  # inside the private /run: per host
            "--pidfile=/var/run/docker.pid",
            f"-H={self.docker_host}",
            f"--config-file={self.run_dir / 'daemon.json'}",
            f"--bip={pool[1]}/24",
            f"--default-address-pool=base={pool},size=24",
            f"--cgroup-parent={self.cgroup_parent}",  # lets teardown find and kill every container
            *self.lab.dockerd_args,
            *extra_args,
        ]
        log = open(self.workdir / "dockerd.log", "ab")  # noqa: SIM115 - owned by the child from here
        env = {**os.environ, "S": str(self.run_dir)}
        env.pop("DOCKER_HOST", None)
        if self.engine.bin_dir is not None:  # its containerd, docker-init, docker-proxy; the system runc
            env["PATH"] = f"{self.engine.bin_dir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        cmd = [*self.nsenter(), "sh", "-c", _DOCKERD_WRAPPER, "sh", *args]
        self.dockerd = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
        log.close()
        if wait:
            self.wait_dockerd()

    def wait_dockerd(self, timeout: float = 60) -> None:
        """Wait until dockerd answers /_ping."""
        path = str(self.run_dir / "docker.sock")
        wait_until(
            lambda: unix_http(path, "GET", "/_ping")[0] == 200,
            timeout,
            f"{self.name}: dockerd",
            self.dockerd,
            self.workdir / "dockerd.log",
        )

    def stop_dockerd(self, timeout: float = 30) -> None:
        """SIGTERM dockerd (it stops its containers and containerd), SIGKILL after ``timeout``."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.dockerd is not None:
            terminate([self.dockerd.pid], timeout)
            self.dockerd.wait()
            self.dockerd = None

    def restart_dockerd(self) -> None:
        """Stop and start dockerd; the mount namespace, plugin dirs and agent stay."""
        self.stop_dockerd()
        self.start_dockerd()

    def dockerd_log(self) -> str:
        """The dockerd log of this host so far."""
        return (self.workdir / "dockerd.log").read_text(errors="replace")

    def docker(
        self, *args: str, check: bool = True, timeout: float | None = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI (the client of this host's engine) against its daemon; text output captured."""
        proc = subprocess.run(
            [self.engine.docker, "-H", self.docker_host, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise CommandFailed(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def create_network(
        self, name: str, *options: str, driver: str = "pyoverlay", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`docker network create -d DRIVER --ipam-driver DRIVER OPTIONS… NAME` on this host."""
        return self.docker(
            "network", "create", "-d", driver, "--ipam-driver", driver, *options, name, check=check
        )

    def client(self) -> docker.DockerClient:
        """A docker SDK client for this host (API version negotiated: the daemon may be 20.10)."""
        import docker

        if self._client is None:
            self._client = docker.DockerClient(base_url=self.docker_host, version="auto", timeout=120)
        return self._client

    def import_image(self, tarball: Path, tag: str = IMAGE_TAG) -> subprocess.Popen[str]:
        """Start `docker import` of the test image; the caller waits (imports run in parallel)."""
        changes = [a for c in IMPORT_CHANGES for a in ("--change", c)]
        return subprocess.Popen(
            [self.engine.docker, "-H", self.docker_host, "import", *changes, str(tarball), tag],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    # --- agent ------------------------------------------------------------------------------------
    def agent_env(self, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment the agent runs with."""
        env = {
            **os.environ,
            "SOCKET": str(self.agent_socket),
            "STATE_DIR": str(self.workdir / "state"),
            "ADVERTISE_ADDR": self.address,
            "ETCD_ENDPOINTS": ",".join(self.lab.etcd_endpoints),
            "DOCKER_HOST": self.docker_host,
            "LOG_LEVEL": "debug",
        }
        env.update(extra_env or {})
        return env

    def start_agent(
        self,
        extra_env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        command: Sequence[str] | None = None,
        wait: bool = True,
        timeout: float = 20,
    ) -> None:
        """Start the agent inside the host; with ``wait``, block until /Plugin.Activate answers 200."""
        if self.agent is not None and self.agent.poll() is None:
            raise RuntimeError(f"{self.name}: agent already running")
        cmd = [*(command or self.lab.agent_command), *args]
        log = open(self.workdir / "agent.log", "ab")  # noqa: SIM115 - owned by the child from here
        self.agent = subprocess.Popen(
            [*self.nsenter(), *cmd],
            stdout=log,
            stderr=log,
            env=self.agent_env(extra_env),
            start_new_session=True,
        )
        log.close()
        (self.run_dir / "agent.pid").write_text(f"{self.agent.pid}\n")
        if wait:
            self.wait_agent(timeout)

    def wait_agent(self, timeout: float = 20) -> None:
        """Wait until the agent's socket answers POST /Plugin.Activate with 200."""
        path = str(self.agent_socket)
        wait_until(
            lambda: unix_http(path, "POST", "/Plugin.Activate", b"")[0] == 200,
            timeout,
            f"{self.name}: agent",
            self.agent,
            self.workdir / "agent.log",
        )

    def stop_agent(self, timeout: float = 10) -> None:
        """SIGTERM the agent's process group, SIGKILL after ``timeout``; no-op if not running."""
        if self.agent is None:
            return
        if self.agent.poll() is None:
            self._signal_agent(signal.SIGTERM)
            try:
                self.agent.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_agent(signal.SIGKILL)
                self.agent.wait()
        self.agent = None

    def kill_agent(self, sig: int = signal.SIGKILL, wait: bool = True) -> None:
        """Signal the agent's whole process group (gunicorn workers too), e.g. to simulate a crash."""
        assert self.agent is not None, "agent not started"
        self._signal_agent(sig)
        if wait and sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self.agent.wait(30)

    def _signal_agent(self, sig: int) -> None:
        assert self.agent is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.agent.pid, sig)

    def agent_log(self) -> str:
        """The agent's stdout/stderr so far (all runs on this host, appended)."""
        try:
            return (self.workdir / "agent.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def agent_log_tail(self, lines: int = 40) -> str:
        """The last lines of the agent log, for assertion messages."""
        return log_tail(self.workdir / "agent.log", lines)
