"""The pyoverlay command without an agent: each subcommand's flags, --version, forget-host on the
embedded store, and stop's handling of PID files (with stand-in processes, no root)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import fields
from importlib import metadata
from pathlib import Path

import pytest

from kvstore import Endpoint, Host, Network, open_store
from plugin import cli, pidfile
from plugin.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for f in fields(Settings):
        monkeypatch.delenv(f.name.upper(), raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def flags_in_help(capsys: pytest.CaptureFixture[str], command: str) -> set[str]:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out)) - {"--help"}


# -- help and version ---------------------------------------------------------------------------------
def test_serve_help_shows_every_setting(capsys) -> None:
    assert flags_in_help(capsys, "serve") == {"--" + f.name.replace("_", "-") for f in fields(Settings)}


@pytest.mark.parametrize("command", ["hosts", "forget-host", "expose", "hide"])
def test_operator_commands_show_only_the_store_settings(capsys, command: str) -> None:
    extra = {"--ip"} if command == "expose" else set()
    assert flags_in_help(capsys, command) == {
        "--etcd-endpoints",
        "--etcd-ca-cert",
        "--etcd-cert",
        "--etcd-key",
        "--state-dir",
        "--log-level",
        *extra,
    }


def test_daemon_config_prints_the_dns_setting(capsys) -> None:
    assert cli.main(["daemon-config", "--dns-upstreams", "10.0.0.2"]) == 0
    assert json.loads(capsys.readouterr().out) == {"dns": ["169.254.53.53", "10.0.0.2"]}
    assert cli.main(["daemon-config", "--dns-address", ""]) == 0  # no name service: nothing needed
    assert json.loads(capsys.readouterr().out) == {}


def test_stop_help_shows_only_the_state_dir(capsys) -> None:
    assert flags_in_help(capsys, "stop") == {"--state-dir"}


def test_settings_without_a_flag_still_come_from_the_environment(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("VXLAN_PORT", "x")  # every setting is still read and checked
    assert run(capsys, "hosts")[0] == 1
    monkeypatch.delenv("VXLAN_PORT")
    code, out, _ = run(capsys, "hosts")
    assert code == 0 and out.startswith("HOST")
    assert (tmp_path / "from-env" / "store.db").exists()


def test_version_comes_from_the_package_metadata(capsys) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out == f"pyoverlay {metadata.version('pyoverlay')}\n"


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    with open(REPO / "pyproject.toml", "rb") as f:
        assert cli.version() == tomllib.load(f)["project"]["version"]


def test_python_m_plugin_cli_answers_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "plugin.cli", "--version"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0 and re.fullmatch(r"pyoverlay \d+\.\d+\.\d+\S*\n", done.stdout)


# -- forget-host ----------------------------------------------------------------------------------------
def test_forget_host_refuses_a_host_the_store_does_not_know(tmp_path, capsys) -> None:
    state = str(tmp_path / "state")
    store = open_store([], state)
    store.register_host(Host("alive1", "192.0.2.1"))
    store.close()
    code, out, err = run(capsys, "forget-host", "nosuchhost", "--state-dir", state)
    assert code == 1 and out == ""
    assert err == "pyoverlay: no host nosuchhost in the store (pyoverlay hosts lists them)\n"


def test_forget_host_removes_a_known_dead_host_once(tmp_path, capsys) -> None:
    state = str(tmp_path / "state")
    store = open_store([], state)
    store.create_network("dead1", "dockA", Network("dockA", 0, None))
    store.put_endpoint(Endpoint("e1", "dockA", "dead1", "192.0.2.9", "02:00:00:00:00:01"))
    store.close()
    assert run(capsys, "forget-host", "dead1", "--state-dir", state) == (
        0,
        "forgot host dead1: 1 endpoint(s) removed\n",
        "",
    )
    code, _, err = run(capsys, "forget-host", "dead1", "--state-dir", state)
    assert code == 1 and "no host dead1 in the store" in err


def test_forget_host_still_refuses_a_live_host(tmp_path, capsys) -> None:
    state = str(tmp_path / "state")
    store = open_store([], state)
    store.register_host(Host("alive1", "192.0.2.1"))
    store.close()
    code, _, err = run(capsys, "forget-host", "alive1", "--state-dir", state)
    assert code == 1 and err == "pyoverlay: host alive1 is alive; stop its agent first\n"


# -- stop, with stand-ins for the agent -----------------------------------------------------------------
def stand_in(*argv: str, ignore_term: bool = False) -> subprocess.Popen[bytes]:
    """A process whose command line reads as `… pyoverlay serve` (or whatever argv says)."""
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def write_pid(state: Path, pid: int) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    path = state / pidfile.FILE_NAME
    path.write_text(f"{pid}\n")
    return path


def test_stop_without_an_agent_fails(tmp_path, capsys) -> None:
    code, out, err = run(capsys, "stop", "--state-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert err == f"pyoverlay: no agent runs on {tmp_path} (no PID file {tmp_path / 'pyoverlay.pid'})\n"


def test_stop_removes_a_stale_pid_file(tmp_path, capsys) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    path = write_pid(tmp_path, proc.pid)
    code, _, err = run(capsys, "stop", "--state-dir", str(tmp_path))
    assert code == 1 and f"pid {proc.pid} in {path} has exited (stale file removed)" in err
    assert not path.exists()


def test_stop_never_signals_a_process_that_reused_the_pid(tmp_path, capsys) -> None:
    other = stand_in("not-our-agent")
    try:
        path = write_pid(tmp_path, other.pid)
        code, _, err = run(capsys, "stop", "--state-dir", str(tmp_path))
        assert code == 1 and f"pid {other.pid} in {path} is another program" in err
        time.sleep(0.2)
        assert other.poll() is None and path.exists()
    finally:
        other.kill()
        other.wait()


def test_stop_terminates_the_agent_and_waits_for_it(tmp_path, capsys) -> None:
    agent = stand_in("pyoverlay", "serve")
    try:
        write_pid(tmp_path, agent.pid)
        code, out, err = run(capsys, "stop", "--state-dir", str(tmp_path))
        # it exited (a zombie until we reap it: stop does not wait for a reaper)
        assert (code, err) == (0, "")
        said = f"stopped the pyoverlay agent (pid {agent.pid}) on {tmp_path}: SIGTERM, exited after "
        assert out.startswith(said) and re.fullmatch(r"\d+\.\d s\n", out[len(said) :])
        assert agent.wait(timeout=5) == -15
    finally:
        agent.kill()
        agent.wait()


def test_stop_reports_an_agent_that_does_not_exit(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli, "STOP_TIMEOUT", 0.5)
    agent = stand_in("pyoverlay", "serve", ignore_term=True)
    try:
        write_pid(tmp_path, agent.pid)
        code, _, err = run(capsys, "stop", "--state-dir", str(tmp_path))
        assert code == 1 and f"still running after 0 s; `kill -KILL {agent.pid}` ends it at once" in err
        assert agent.poll() is None
    finally:
        agent.kill()
        agent.wait()


# -- the PID file the agent writes ------------------------------------------------------------------------
def test_claim_writes_this_process_and_release_removes_only_its_own(tmp_path) -> None:
    path = pidfile.claim(str(tmp_path / "state"))
    assert path == tmp_path / "state" / "pyoverlay.pid" and path.read_text() == f"{os.getpid()}\n"
    path.write_text("1\n")  # another agent's by now
    pidfile.release(path)
    assert path.exists()
    pidfile.claim(str(tmp_path / "state"))  # pid 1 is not an agent: overwritten
    pidfile.release(path)
    assert not path.exists()


def test_an_agent_whose_pid_file_cannot_be_written_still_serves(tmp_path, caplog) -> None:
    (tmp_path / "not-a-dir").write_text("")
    assert pidfile.claim(str(tmp_path / "not-a-dir" / "state")) is None
    assert "`pyoverlay stop` will not find this agent" in caplog.text
    pidfile.release(None)


def test_claim_refuses_a_state_dir_another_agent_runs_on(tmp_path) -> None:
    agent = stand_in("pyoverlay", "serve")
    try:
        write_pid(tmp_path, agent.pid)
        with pytest.raises(
            SystemExit, match=rf"an agent already runs on {re.escape(str(tmp_path))} \(pid {agent.pid}\)"
        ):
            pidfile.claim(str(tmp_path))
    finally:
        agent.kill()
        agent.wait()


@pytest.mark.parametrize(
    ("argv", "agent"),
    [
        (["/opt/pyoverlay/bin/python3", "/opt/pyoverlay/bin/pyoverlay", "serve"], True),
        (["python", "-m", "plugin.cli", "serve", "--log-level", "debug"], True),
        (["/opt/pyoverlay/bin/python3", "/opt/pyoverlay/bin/pyoverlay", "hosts"], False),
        (["/opt/pyoverlay/bin/python3", "-m", "pytest"], False),
        (["vim", "/var/lib/pyoverlay/serve"], False),
        ([], False),
    ],
)
def test_what_counts_as_an_agent(argv: list[str], agent: bool) -> None:
    assert pidfile.is_agent_command(argv) is agent
