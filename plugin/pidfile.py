"""The agent's PID file in its state directory: written by ``pyoverlay serve`` (the gunicorn master's
pid), removed when it exits cleanly, read by ``pyoverlay stop``. A pid is only trusted while
/proc/<pid>/cmdline is a pyoverlay agent's: a pid reused by another process is never signalled."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "pyoverlay.pid"


class NoAgent(Exception):
    """No agent runs on this state directory; the message says why."""


def path_in(state_dir: str) -> Path:
    return Path(state_dir) / FILE_NAME


def read_pid(path: Path) -> int | None:
    """The pid the file names; None if it is missing or holds no pid."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    words = text.split()
    try:
        pid = int(words[0]) if words else 0
    except ValueError:
        return None
    return pid if pid > 0 else None


def is_agent_command(argv: list[str]) -> bool:
    """Whether a command line is ``pyoverlay serve`` (the console script or ``python -m plugin.cli``)."""
    program = any(os.path.basename(arg) == "pyoverlay" or arg == "plugin.cli" for arg in argv)
    return program and "serve" in argv


def command_of(pid: int) -> list[str] | None:
    """The live process's command line; None if it has exited (a zombie has exited too).
    PermissionError if this user may not see it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, and another user's
        raise PermissionError(f"process {pid} is hidden from this user (/proc hidepid)") from None
    # the state follows the command name in parentheses, which may itself hold spaces or ')'
    if stat[stat.rindex(")") + 2 :].startswith(("Z", "X")):
        return None
    return [arg.decode(errors="replace") for arg in argv.split(b"\0") if arg]


def claim(state_dir: str) -> Path | None:
    """Write this process's pid; SystemExit if another live agent holds the file (two agents on one
    state directory would share a host id and a store). A stale file is overwritten. None if the file
    cannot be written (a read-only state directory serves an etcd agent well): only stop needs it."""
    path = path_in(state_dir)
    pid = read_pid(path)
    if pid is not None and pid != os.getpid():
        argv = command_of(pid)
        if argv is not None and is_agent_command(argv):
            raise SystemExit(
                f"pyoverlay: an agent already runs on {state_dir} (pid {pid}); "
                f"`pyoverlay stop --state-dir {state_dir}` stops it"
            )
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"{os.getpid()}\n")
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("no PID file, so `pyoverlay stop` will not find this agent: %s", exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return None
    return path


def release(path: Path | None) -> None:
    """Remove the file if it still names this process (a forked worker leaves through here too)."""
    if path is not None and read_pid(path) == os.getpid():
        path.unlink(missing_ok=True)


def running_agent(state_dir: str) -> int:
    """The pid of the agent running on ``state_dir``. NoAgent if there is none; a file whose process
    has exited is removed on the way."""
    path = path_in(state_dir)
    pid = read_pid(path)
    if pid is None:
        state = "no PID file" if not path.exists() else "an unreadable PID file"
        raise NoAgent(f"no agent runs on {state_dir} ({state} {path})")
    argv = command_of(pid)
    if argv is None:
        path.unlink(missing_ok=True)
        raise NoAgent(f"no agent runs on {state_dir}: pid {pid} in {path} has exited (stale file removed)")
    if not is_agent_command(argv):
        # also what a managed plugin's file looks like from the host: its pid is in its own namespace
        raise NoAgent(
            f"no agent runs on {state_dir}: pid {pid} in {path} is another program "
            f"({' '.join(argv) or 'a kernel thread'}); left it alone "
            "(a managed plugin's agent stops with `docker plugin disable`)"
        )
    return pid


def stop(pid: int, timeout: float) -> float | None:
    """SIGTERM to the agent, then wait until it has exited: the seconds that took, or None if it is
    still running after ``timeout``. ProcessLookupError if it exited before the signal."""
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while time.monotonic() - started < timeout:
        if command_of(pid) is None:
            return time.monotonic() - started
        time.sleep(0.05)
    return None
