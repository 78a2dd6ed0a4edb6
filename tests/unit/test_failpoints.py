"""Failpoints: refused when misspelt, silent when unset, and ``kill`` takes the whole process group."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from plugin import failpoints


def test_parse_refuses_unknown_points_and_actions():
    assert failpoints.parse("") == {}
    assert failpoints.parse("Join.after_kernel=kill, Leave.before_answer=kill") == {
        "Join.after_kernel": "kill",
        "Leave.before_answer": "kill",
    }
    for bad in ("Join.after_kernal=kill", "Join.after_kernel=panic", "Join.after_kernel"):
        with pytest.raises(ValueError, match="PYOVERLAY_FAILPOINTS"):
            failpoints.parse(bad)


def test_unset_points_do_nothing():
    assert failpoints.configure({}) == {}
    failpoints.hit("Join.after_kernel")  # still alive


# A parent (the gunicorn master) and a child (its worker) in one new session; the child hits the point.
_SCRIPT = """
import os, sys, time
from plugin import failpoints
failpoints.configure({"PYOVERLAY_FAILPOINTS": "CreateEndpoint.after_store=kill"})
if os.fork() == 0:
    failpoints.hit("CreateEndpoint.after_kernel")  # not enabled
    print("child alive", flush=True)
    failpoints.hit("CreateEndpoint.after_store")
    os._exit(0)
time.sleep(30)
print("parent survived", flush=True)
"""


def test_kill_takes_the_whole_process_group():
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        capture_output=True,
        text=True,
        timeout=20,
        start_new_session=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert proc.returncode == -9, proc
    assert "child alive" in proc.stdout and "parent survived" not in proc.stdout
    assert "failpoint CreateEndpoint.after_store: kill" in proc.stderr
