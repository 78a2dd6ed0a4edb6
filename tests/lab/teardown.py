"""Tearing a lab down from its traces alone: works for this process's lab and a crashed run's."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from .system import (
    cgroup_pids,
    cgroup_roots,
    is_alive,
    list_netns,
    mounts_under,
    netns_inode,
    pids_in_namespaces,
    remove_cgroups,
    sh,
    signal_pids,
    wait_gone,
)

RUN_ROOT = Path("/run")  # /run/<name>: short paths for unix sockets, and where crash clean-up looks
STATE_KIND = "pyoverlay-lab"


def remove_workdir_content(workdir: Path, hosts: Sequence[str]) -> None:
    """Remove what a lab wrote into a caller-owned workdir; the image cache stays for the next run."""
    for entry in [*hosts, "etcd", "etcd.log"]:
        path = workdir / entry
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def cleanup(name: str) -> None:
    """Remove every trace of lab ``name`` (this process's or a crashed one's). Idempotent."""
    run_dir = RUN_ROOT / name
    state = read_state(name)
    pattern = re.compile(rf"{re.escape(name)}-(ul|h\d+)")
    namespaces = [ns for ns in list_netns() if pattern.fullmatch(ns)]
    net_inodes = {i for i in (netns_inode(ns) for ns in namespaces) if i is not None}
    mnt_inodes = set()
    for pidfile in run_dir.glob("h*/anchor.pid"):
        try:
            pid = int(pidfile.read_text())
            if os.stat(f"/proc/{pid}/ns/net").st_ino in net_inodes:  # not a recycled pid
                mnt_inodes.add(os.stat(f"/proc/{pid}/ns/mnt").st_ino)
        except (OSError, ValueError):
            pass
    cgroups = sorted(
        {f"/{d.name}" for d in _lab_cgroup_dirs(name)} | {f"/{ns}" for ns in namespaces if "-h" in ns}
    )
    # Containers first: once the shims are gone, their processes would be orphans outside our netns.
    for cg in cgroups:
        signal_pids(cgroup_pids(cg), signal.SIGKILL)
    # Nothing outside the lab depends on these processes and all their state dies with the lab's
    # namespaces, cgroups and dirs: SIGKILL is safe and fast.
    pids = pids_in_namespaces(net_inodes, mnt_inodes)
    signal_pids(pids, signal.SIGKILL)
    left = wait_gone(pids, 10)
    if left:
        raise RuntimeError(f"lab {name}: processes {sorted(left)} survived SIGKILL")
    for cg in cgroups:
        remove_cgroups(cg)
    for ns in namespaces:
        sh(["ip", "netns", "delete", ns], check=False)
    for target in sorted(mounts_under([str(run_dir)]), reverse=True):
        sh(["umount", "-l", target], check=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    workdir = state.get("workdir")
    if isinstance(workdir, str) and not state.get("keep"):
        if state.get("owned_workdir"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            remove_workdir_content(Path(workdir), [str(h) for h in state.get("hosts", [])])  # type: ignore[union-attr]


def _lab_cgroup_dirs(name: str) -> list[Path]:
    pattern = re.compile(rf"{re.escape(name)}-h\d+")
    found = []
    for root in cgroup_roots():
        found += [d for d in root.iterdir() if d.is_dir() and pattern.fullmatch(d.name)]
    return found


def read_state(name: str) -> dict[str, object]:
    """The lab.json a lab wrote at up(), or {} if there is none."""
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((RUN_ROOT / name / "lab.json").read_text())
        if isinstance(state, dict) and state.get("kind") == STATE_KIND:
            return state
    return {}


def cleanup_stale() -> list[str]:
    """Clean up every lab whose owning process died without tearing it down; return their names.

    Labs started by the CLI are detached (no owner) and are left alone.
    """
    stale = []
    for state_file in RUN_ROOT.glob("*/lab.json"):
        name = state_file.parent.name
        owner = read_state(name).get("owner_pid")
        if isinstance(owner, int) and not is_alive(owner):
            cleanup(name)
            stale.append(name)
    return stale
