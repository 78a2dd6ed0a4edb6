"""Reaching into a lab container's network namespace from the root namespace, with this tree's python."""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def container_netns(h, container: str) -> str:
    """The path of the container's network namespace, reachable from the root namespace."""
    sandbox = h.docker("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", container).stdout.strip()
    # /var/run is a symlink to /run, which /proc/<pid>/root would resolve in our namespace, not the host's
    return h.host_path(sandbox.replace("/var/run/", "/run/", 1))


def tool(h, container: str, module: str, *args: str) -> list[str]:
    """``python -m module args`` (tests.spoof, tests.vxlan_inject) in the container's netns."""
    return ["nsenter", f"--net={container_netns(h, container)}", sys.executable, "-m", module, *args]


def start(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listening(proc: subprocess.Popen[str], timeout: float = 30) -> subprocess.Popen[str]:
    """Wait until a tool's listener says on stderr that it listens (its socket is bound): a sleep instead
    was too short on a busy machine, and the first frames went to nobody."""
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], timeout)
    line = proc.stderr.readline() if ready else ""
    if line.strip() != "listening":
        proc.kill()
        raise AssertionError(f"{proc.args}: not listening within {timeout} s: {line}{proc.stderr.read()}")
    return proc


def run(command: list[str]) -> str:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def result(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """The count a tool printed; its error output if it printed none."""
    out, err = proc.communicate(timeout=timeout)
    if not out.strip():
        raise AssertionError(f"{proc.args}: no count; {err.strip()}")
    return int(out)
