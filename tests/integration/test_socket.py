"""The plugin socket is root-only: whoever can talk to it can create networks and addresses as root."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugin_client import PluginClient

from .conftest import AgentProcess, NetnsHost

pytestmark = [pytest.mark.integration, pytest.mark.faults]

NOBODY = 65534
# Plain /usr/bin/python3 and the socket module only: nobody may not read the test's venv.
CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(type(exc).__name__, exc.errno)
    sys.exit(3)
print("connected")
"""


@pytest.fixture
def agent(netns_host: NetnsHost, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentProcess]:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{netns_host.workdir}/no-dockerd.sock")  # no daemon needed
    # A socket in a directory the agent makes, under directories everyone may enter: only the
    # socket's own mode can keep another user out (pytest's tmp_path is 0700 and would do it for us).
    parent = Path("/run/pyoverlay-it") / f"sock-{uuid.uuid4().hex[:8]}"
    parent.mkdir(mode=0o755, parents=True)
    os.chmod(parent, 0o755)
    proc = AgentProcess(netns_host)
    proc.socket = str(parent / "plugins" / "pyoverlay.sock")
    proc.client = PluginClient(proc.socket, timeout=30)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        subprocess.run(["rm", "-rf", str(parent)], check=False)


def test_the_socket_is_root_only_and_its_directory_only_root_may_change(agent: AgentProcess) -> None:
    info = os.stat(agent.socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert (info.st_uid, info.st_gid) == (0, 0)
    assert stat.S_IMODE(info.st_mode) & 0o077 == 0, oct(info.st_mode)
    directory = os.stat(os.path.dirname(agent.socket))  # made by the agent
    assert directory.st_uid == 0 and stat.S_IMODE(directory.st_mode) & 0o022 == 0, oct(directory.st_mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(os.path.dirname(agent.socket))).st_mode) & 0o005 == 0o005


def test_a_non_root_process_is_refused_and_root_is_served(agent: AgentProcess) -> None:
    as_nobody = subprocess.run(
        ["/usr/bin/python3", "-c", CONNECT, agent.socket],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert as_nobody.returncode == 3, as_nobody.stdout + as_nobody.stderr
    assert as_nobody.stdout.strip() == "PermissionError 13"  # EACCES: the socket's mode, not a dead agent
    as_root = subprocess.run(
        ["/usr/bin/python3", "-c", CONNECT, agent.socket], capture_output=True, text=True, timeout=30
    )
    assert as_root.stdout.strip() == "connected"
    assert agent.client.ok("Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
