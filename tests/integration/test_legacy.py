"""Legacy mode: `pyoverlay serve` run the way packaging/pyoverlay.service runs it (its ExecStart, its
EnvironmentFile), found by dockerd through packaging/pyoverlay.spec in /etc/docker/plugins, which names
a socket outside /run/docker/plugins. No systemd here: the unit is read and its command run on a lab host.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401
from tests.lab.host import LabHost
from tests.lab.system import wait_until
from tests.plugin_client import unix_http

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "pyoverlay.service"
DEFAULTS = REPO / "packaging" / "pyoverlay.default"  # the EnvironmentFile template
SPEC = REPO / "packaging" / "pyoverlay.spec"
PREFIX = "/opt/pyoverlay"  # install-legacy.sh's venv; here the repository's
# What systemd gives a system service before EnvironmentFile= and Environment=.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def service_section(unit: Path) -> dict[str, list[str]]:
    """[Service] settings of a unit file: key -> every value, in order (keys may repeat)."""
    section, values = "", {}
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def exec_start(service: dict[str, list[str]]) -> list[str]:
    """ExecStart as an argv: prefixes such as `-` or `@` dropped, quoting as systemd splits it."""
    (command,) = service["ExecStart"]
    argv = shlex.split(command.lstrip("-@:+!"))
    assert not any("$" in arg for arg in argv), f"variable expansion in ExecStart is not emulated: {argv}"
    return argv


def environment_file(text: str) -> dict[str, str]:
    """systemd EnvironmentFile= semantics for the forms we use: KEY=VALUE lines, # or ; comments, blank
    lines, optional quotes around the value; a later assignment wins."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def spec_socket() -> str:
    """The path packaging/pyoverlay.spec names (dockerd reads the whole file as one URL)."""
    url = SPEC.read_text().strip()
    assert url.startswith("unix://"), url
    return url.removeprefix("unix://")


class LegacyService:
    """`pyoverlay serve` on a lab host as systemd would start it from packaging/pyoverlay.service."""

    def __init__(self, host: LabHost, settings: dict[str, str]) -> None:
        service = service_section(UNIT)
        argv = exec_start(service)
        assert argv[0].startswith(PREFIX + "/"), argv
        self.argv = [str(REPO / ".venv") + argv[0].removeprefix(PREFIX), *argv[1:]]
        (env_file,) = service["EnvironmentFile"]
        assert env_file.lstrip("-") == "/etc/default/pyoverlay", env_file
        # /etc/default/pyoverlay as an operator writes it: the template plus their settings
        self.env_text = DEFAULTS.read_text() + "".join(f"{k}={v}\n" for k, v in settings.items())
        self.env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", **environment_file(self.env_text)}
        self.host = host
        self.log = host.workdir / "legacy-agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        """The agent's socket as the root namespace reaches it."""
        return self.host.host_path(self.env["SOCKET"])

    def start(self) -> float:
        # StateDirectory=pyoverlay: systemd creates it; here STATE_DIR is the host's own state dir
        Path(self.env["STATE_DIR"]).mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = self.host.popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(
            lambda: unix_http(self.socket, "POST", "/Plugin.Activate", b"")[0] == 200,
            20,
            "legacy agent",
            self.proc,
            self.log,
        )
        return time.monotonic() - start

    def stop(self) -> None:
        """KillMode=mixed: SIGTERM to the main process, SIGKILL to what is left after TimeoutStopSec."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def legacy(make_lab) -> Iterator[tuple[LabHost, LegacyService]]:  # noqa: F811
    lab = make_lab(1, etcd=False)
    h = lab.hosts[0]
    settings = {
        "SOCKET": spec_socket(),  # not in /run/docker/plugins: only the spec file leads dockerd to it
        "STATE_DIR": str(h.workdir / "state"),  # the lab hosts share the root filesystem's /var/lib
        "LOG_LEVEL": "debug",
    }
    service = LegacyService(h, settings)
    (h.plugin_spec_dir / "pyoverlay.spec").write_bytes(SPEC.read_bytes())  # /etc/docker/plugins on h
    service.start()
    try:
        yield h, service
    finally:
        service.stop()
        print(service.log.read_text(errors="replace")[-4000:])


def ip_of(h: LabHost, container: str, network: str) -> str:
    out = h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
    return json.loads(out)[network]["IPAddress"]


def test_unit_and_spec_file_serve_dockerd(legacy):
    h, service = legacy
    image = h.lab.image
    # nothing in /run/docker/plugins: dockerd can only find the driver through the spec file
    assert not list(h.plugin_socket_dir.iterdir())
    assert h.run(["cat", "/etc/docker/plugins/pyoverlay.spec"]).stdout.strip() == f"unix://{spec_socket()}"
    assert service.env["SOCKET"] == "/run/pyoverlay/pyoverlay.sock"

    h.create_network("web", "--subnet", "10.70.0.0/24")
    inspect = json.loads(h.docker("network", "inspect", "web").stdout)[0]
    assert inspect["Driver"] == "pyoverlay" and inspect["IPAM"]["Driver"] == "pyoverlay"
    h.docker("run", "-d", "--init", "--name", "w1", "--network", "web", image, "sleep", "600")
    h.docker("run", "-d", "--init", "--name", "w2", "--network", "web", image, "sleep", "600")
    h.docker("exec", "w1", "ping", "-c", "2", "-W", "2", ip_of(h, "w2", "web"))
    h.docker("exec", "w2", "ping", "-c", "2", "-W", "2", "w1")  # by name: Docker's embedded DNS
    # the requests came to this agent, on the spec file's socket
    log = service.log.read_text(errors="replace")
    assert "/NetworkDriver.CreateNetwork" in log and "/IpamDriver.RequestAddress" in log

    # a restarted dockerd finds the driver again through the spec file (the unit starts before docker)
    h.restart_dockerd()
    h.docker("start", "w1", "w2")
    h.docker("exec", "w1", "ping", "-c", "2", "-W", "2", ip_of(h, "w2", "web"))

    # and the service's own restart (new code, same state) leaves the containers connected
    service.stop()
    service.start()
    h.docker("run", "-d", "--init", "--name", "w3", "--network", "web", image, "sleep", "600")
    h.docker("exec", "w3", "ping", "-c", "2", "-W", "2", ip_of(h, "w1", "web"))

    h.docker("rm", "-f", "w1", "w2", "w3")
    h.docker("network", "rm", "web")
