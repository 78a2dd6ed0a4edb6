"""A throwaway registry (Debian's `docker-registry`) and managed-plugin create/push/install helpers.

dockerd trusts plain-HTTP registries on 127.0.0.0/8 by default, so a loopback registry needs no daemon
configuration. A lab host lives in its own network namespace: start the registry where the hosts reach it
(`host="10.99.0.254", prefix=["ip", "netns", "exec", NS]`) and give their dockerds
`--insecure-registry=10.99.0.254:5000`. Every docker helper takes `docker_host` to pick the daemon.

    with LocalRegistry() as registry:
        ref = registry.ref("pyoverlay:test")
        create_plugin(ref)  # from build/plugin (`make plugin`)
        push_plugin(ref)
        remove_plugin(ref)
        install_plugin(ref, {"LOG_LEVEL": "debug"}, alias="pyoverlay")  # driver name: pyoverlay:latest
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REGISTRY_BINARY = "/usr/bin/docker-registry"
PLUGINS_DIR = "/run/docker/plugins"  # hard-coded in dockerd: managed plugins' sockets are <dir>/<id>/<socket>
_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {host}:{port}
"""
_PROBE = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)"


class RegistryError(RuntimeError):
    pass


def registry_available() -> bool:
    """Whether this machine can run the registry (a lab test skips with a reason when not)."""
    return os.access(REGISTRY_BINARY, os.X_OK)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalRegistry:
    """Registry v2 over plain HTTP, storing under a temporary directory removed on stop.

    `prefix` runs the registry (and its readiness probe) through a command such as `ip netns exec NS`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        prefix: Sequence[str] = (),
        binary: str = REGISTRY_BINARY,
    ) -> None:
        self.host = host
        self.port = port or (5000 if prefix else _free_port(host))
        self.prefix = list(prefix)
        self.binary = binary
        self.workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def ref(self, name: str) -> str:
        """A reference to `name` (e.g. `pyoverlay:test`) in this registry."""
        return f"{self.address}/{name}"

    def start(self, timeout: float = 15.0) -> LocalRegistry:
        if not registry_available():
            raise RegistryError(f"{self.binary} is not installed (Debian package docker-registry)")
        self.workdir = Path(tempfile.mkdtemp(prefix="pyoverlay-registry-"))
        config = self.workdir / "config.yml"
        config.write_text(_CONFIG.format(root=self.workdir / "storage", host=self.host, port=self.port))
        with open(self.workdir / "registry.log", "wb") as log:
            self._process = subprocess.Popen(
                [*self.prefix, self.binary, "serve", str(config)], stdout=log, stderr=log
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe = [*self.prefix, sys.executable, "-c", _PROBE, f"http://{self.address}/v2/"]
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                log = self.log_tail()
                self.stop()
                raise RegistryError(f"registry exited: {log}")
            if subprocess.run(probe, capture_output=True, timeout=10, check=False).returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RegistryError(f"registry on {self.address} not ready after {timeout} s")

    def log_tail(self, lines: int = 20) -> str:
        log = self.workdir / "registry.log" if self.workdir else None
        if log is None or not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def docker_cli() -> str:
    """The docker client to run: $DOCKER, else `docker` on PATH."""
    return os.environ.get("DOCKER", "docker")


def _docker(
    args: Sequence[str], docker_host: str | None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=docker_host) if docker_host else None
    command = [docker_cli(), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    if check and result.returncode != 0:
        raise RegistryError(f"{' '.join(command)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def create_plugin(name: str, plugin_dir: str | None = None, docker_host: str | None = None) -> None:
    """(Re)create plugin `name` from a rootfs + config.json directory (default: `make plugin`'s build/plugin).

    dockerd 20.10 refuses a second plugin made from identical content ("content sha256:… already
    exists"): create the plugin under its registry name itself, or remove the other copy first.
    """
    remove_plugin(name, docker_host)
    _docker(["plugin", "create", name, plugin_dir or _default_plugin_dir()], docker_host)


def _default_plugin_dir() -> str:
    directory = Path(__file__).resolve().parents[2] / "build" / "plugin"
    if not (directory / "config.json").exists():
        raise RegistryError(f"{directory} has no config.json: run `make plugin` first")
    return str(directory)


def push_plugin(name: str, docker_host: str | None = None) -> None:
    """Push plugin `name`, which names its registry (`127.0.0.1:5000/pyoverlay:test`)."""
    _docker(["plugin", "push", name], docker_host)


def install_plugin(
    ref: str,
    settings: Mapping[str, str] | None = None,
    alias: str | None = None,
    enable: bool = True,
    docker_host: str | None = None,
) -> None:
    """`docker plugin install --grant-all-permissions ref KEY=VALUE...`, replacing a plugin of that name.

    Settings are env values (`LOG_LEVEL`) or mount sources (`state.source`). Enabling fails when the
    state mount's source directory does not exist on the daemon's side: dockerd does not create it.
    """
    remove_plugin(alias or ref, docker_host)
    args = ["plugin", "install", "--grant-all-permissions"]
    args += ["--alias", alias] if alias else []
    args += [] if enable else ["--disable"]
    args += [ref, *(f"{key}={value}" for key, value in (settings or {}).items())]
    _docker(args, docker_host)


def remove_plugin(name: str, docker_host: str | None = None) -> None:
    """Disable and remove plugin `name` if it exists (networks still using it make this fail)."""
    if _docker(["plugin", "inspect", name], docker_host, check=False).returncode == 0:
        _docker(["plugin", "rm", "--force", name], docker_host)


def plugin_socket(name: str, plugins_dir: str = PLUGINS_DIR, docker_host: str | None = None) -> str:
    """The enabled plugin's socket: <plugins_dir>/<plugin id>/<socket> (a lab host: its plugin dir)."""
    found = _docker(
        ["plugin", "inspect", "--format", "{{.Id}} {{.Config.Interface.Socket}}", name], docker_host
    )
    plugin_id, sock = found.stdout.split()
    return os.path.join(plugins_dir, plugin_id, sock)
