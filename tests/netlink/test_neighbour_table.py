"""The agent raises the host's neighbour table limits (driver/neighbour_table.py) on the real kernel.

The limits are host-wide: each test puts back what it found."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.neighbour_table import FAMILIES, ensure_neighbour_table, wanted_limits
from driver.netns import run_in_netns

ROOT = Path(__file__).resolve().parents[2]
NAMES = [f"net/{f}/neigh/default/{t}" for f in FAMILIES for t in ("gc_thresh1", "gc_thresh2", "gc_thresh3")]


def _read(name: str) -> int:
    return int(Path("/proc/sys", name).read_text())


def _write(name: str, value: int) -> None:
    Path("/proc/sys", name).write_text(str(value))


@pytest.fixture
def kernel_defaults() -> Iterator[None]:
    """The kernel's default limits for the test, and the host's own put back after."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    saved = {name: _read(name) for name in NAMES}
    try:
        for family in FAMILIES:
            for threshold, value in {"gc_thresh3": 1024, "gc_thresh2": 512, "gc_thresh1": 128}.items():
                _write(f"net/{family}/neigh/default/{threshold}", value)
        yield
    finally:
        # in an order the kernel accepts whatever the values: thresh3 first when raising
        for name in sorted(NAMES, reverse=True):
            _write(name, saved[name])


def test_raises_the_limits_once_and_never_lowers_them(kernel_defaults: None) -> None:
    raised = ensure_neighbour_table(16384)
    assert raised is not None
    assert {(r.name, r.before, r.after) for r in raised} == {
        (f"net/{f}/neigh/default/{t}", before, after)
        for f in FAMILIES
        for (t, after), before in zip(wanted_limits(16384).items(), (128, 512, 1024), strict=True)
    }
    assert {name: _read(name) for name in NAMES} == {
        f"net/{f}/neigh/default/{t}": v for f in FAMILIES for t, v in wanted_limits(16384).items()
    }
    assert ensure_neighbour_table(16384) == []
    _write("net/ipv4/neigh/default/gc_thresh3", 50000)  # the host's own, higher
    assert ensure_neighbour_table(16384) == []
    assert _read("net/ipv4/neigh/default/gc_thresh3") == 50000


def test_a_namespace_other_than_the_hosts_does_not_show_them(kernel_defaults: None, ns: str) -> None:
    assert run_in_netns(f"/run/netns/{ns}", lambda: ensure_neighbour_table(16384)) is None
    assert _read("net/ipv4/neigh/default/gc_thresh3") == 1024


def test_read_only_proc_sys_is_written_through_a_procfs_of_its_own(
    kernel_defaults: None, tmp_path: Path
) -> None:
    """As in a managed plugin's container: Docker mounts /proc/sys read-only."""
    script = (
        "import driver.procfs as p, driver.neighbour_table as n\n"
        f"p.PRIVATE_PROC = {str(tmp_path / 'proc')!r}\n"
        "print(len(n.ensure_neighbour_table(16384)))\n"
    )
    run = subprocess.run(
        [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && '
            '! sh -c "echo 1 > /proc/sys/net/ipv4/neigh/default/gc_thresh1" 2>/dev/null && '
            'exec "$0" -c "$1"',
            sys.executable, script,
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(len(NAMES))
    assert _read("net/ipv4/neigh/default/gc_thresh3") == 16384
