"""A real agent (`pyoverlay serve` in a throwaway namespace, embedded store, no dockerd): LOG_FORMAT=json
gives one JSON object per line, with one line per plugin request at debug level carrying its outcome and
latency; `pyoverlay status --json` gets this host's part from the agent's socket."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import PYOVERLAY, AgentProcess, NetnsHost

pytestmark = pytest.mark.integration


@pytest.fixture
def agent(netns_host: NetnsHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-dockerd.sock")  # never this machine's dockerd
    proc = AgentProcess(netns_host, env={"LOG_FORMAT": "json", "LOG_LEVEL": "debug"})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop(signal.SIGKILL)


def test_json_logs_have_one_line_per_request_with_its_latency(agent: AgentProcess) -> None:
    agent.client.ok("NetworkDriver.GetCapabilities")
    status, _ = agent.client.call("NetworkDriver.CreateNetwork", {"NetworkID": ""})  # refused: bad request
    assert status >= 400
    agent.stop(signal.SIGTERM)
    lines = agent.log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, gunicorn's own too, is one JSON object
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    requests = {e["request"]: e for e in entries if "request" in e}
    ok = requests["NetworkDriver.GetCapabilities"]
    assert ok["level"] == "debug" and ok["outcome"] == "ok" and ok["status"] == 200
    assert isinstance(ok["latency_ms"], float) and 0 < ok["latency_ms"] < 60_000
    refused = requests["NetworkDriver.CreateNetwork"]
    assert refused["outcome"] == "BadRequest" and refused["status"] == 400
    assert any(e["logger"].startswith("gunicorn") for e in entries)
    print(f"{len(entries)} log lines, GetCapabilities took {ok['latency_ms']} ms")


def test_status_asks_the_agent_over_its_socket(agent: AgentProcess) -> None:
    agent.client.ok("NetworkDriver.GetCapabilities")
    done = subprocess.run(
        [PYOVERLAY, "status", "--json", "--socket", agent.socket, "--state-dir", agent.state_dir],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    local = json.loads(done.stdout)["local"]
    assert local["host_id"] == (Path(agent.state_dir) / "host-id").read_text().strip()
    assert local["datapath"].startswith("vxlan") and local["socket"] == agent.socket
    assert local["store"]["kind"] == "embedded" and local["store"]["healthy"] is True
    assert local["event_loop"]["lag"] >= 0 and local["lease"]["ttl"] == 30
    agent.stop(signal.SIGKILL)
    done = subprocess.run(
        [PYOVERLAY, "status", "--socket", agent.socket, "--state-dir", agent.state_dir],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "agent not answering" in done.stdout, done.stdout
