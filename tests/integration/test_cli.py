"""`pyoverlay stop` against a real agent (`pyoverlay serve` in a throwaway namespace, embedded store)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import PYOVERLAY, AgentProcess, NetnsHost

pytestmark = pytest.mark.integration


def pyoverlay(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYOVERLAY, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def agent(netns_host: NetnsHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # No daemon: this is about the agent's process, and it must not touch a dockerd of this machine.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-dockerd.sock")
    proc = AgentProcess(netns_host)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop(signal.SIGKILL)
        print(proc.log.read_text()[-4000:])


def test_stop_stops_the_agent_serve_started(agent: AgentProcess) -> None:
    assert agent.proc is not None
    pid_file = Path(agent.state_dir) / "pyoverlay.pid"
    assert pid_file.read_text() == f"{agent.proc.pid}\n"  # the gunicorn master's

    done = pyoverlay("stop", "--state-dir", agent.state_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"stopped the pyoverlay agent (pid {agent.proc.pid}) on {agent.state_dir}")
    assert agent.proc.wait(timeout=1) == 0  # it has exited, cleanly
    assert not pid_file.exists() and not os.path.exists(agent.socket)

    again = pyoverlay("stop", "--state-dir", agent.state_dir)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr == f"pyoverlay: no agent runs on {agent.state_dir} (no PID file {pid_file})\n"


def test_a_second_agent_on_the_same_state_dir_is_refused(agent: AgentProcess) -> None:
    assert agent.proc is not None
    # its own socket: were it to start, it must not take the first one's (nor this machine's real one)
    serve = [PYOVERLAY, "serve", "--state-dir", agent.state_dir, "--socket", f"{agent.socket}.2"]
    second = subprocess.run(
        ["nsenter", f"--net=/run/netns/{agent.host.name}", *serve],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert second.returncode == 1
    assert f"an agent already runs on {agent.state_dir} (pid {agent.proc.pid})" in second.stderr
    assert agent.client.ok("Plugin.Activate")  # the first one serves on


def test_after_a_crash_stop_clears_the_stale_pid_file_and_serve_starts_again(agent: AgentProcess) -> None:
    assert agent.proc is not None
    pid = agent.proc.pid
    agent.stop(signal.SIGKILL)  # no clean exit: the PID file stays behind
    pid_file = Path(agent.state_dir) / "pyoverlay.pid"
    assert pid_file.read_text() == f"{pid}\n"

    done = pyoverlay("stop", "--state-dir", agent.state_dir)
    assert done.returncode == 1
    assert f"pid {pid} in {pid_file} has exited (stale file removed)" in done.stderr
    assert not pid_file.exists()

    pid_file.write_text(f"{pid}\n")  # a crash again: serve takes over a stale file
    agent.start()
    assert agent.proc is not None and pid_file.read_text() == f"{agent.proc.pid}\n"
    assert pyoverlay("stop", "--state-dir", agent.state_dir).returncode == 0
