"""Process, namespace, cgroup and unix-socket helpers the lab is built on (Linux, root)."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/run/netns")


def sh(cmd: Sequence[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command in the root namespaces, capturing text output; raise with stderr on failure."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_inode(name: str) -> int | None:
    """Inode of a named network namespace (what /proc/PID/ns/net resolves to), None if absent."""
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except OSError:
        return None


def list_netns() -> list[str]:
    """Names in /run/netns (what `ip netns list` shows)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def _ns_inode(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None  # gone, or a zombie (whose namespaces are already released)


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _parent_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for pid in _all_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # comm may contain spaces and parentheses: the fields after the last ")" are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        parents[pid] = int(fields[1])
    return parents


def is_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_in_namespaces(net_inodes: Iterable[int] = (), mnt_inodes: Iterable[int] = ()) -> set[int]:
    """Live processes in any of the given network or mount namespaces, plus all their descendants.

    Descendants matter: container processes sit in their own namespaces but are children of the
    host's containerd shims, and must die with the host.
    """
    nets, mnts = set(net_inodes), set(mnt_inodes)
    me = os.getpid()
    seeds = {
        pid
        for pid in _all_pids()
        if pid != me and (_ns_inode(pid, "net") in nets or _ns_inode(pid, "mnt") in mnts)
    }
    children: dict[int, list[int]] = {}
    for pid, ppid in _parent_map().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(seeds)
    while todo:
        pid = todo.pop()
        if pid in found or pid == me:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return {pid for pid in found if is_alive(pid)}


def signal_pids(pids: Iterable[int], sig: int) -> None:
    """Send a signal, ignoring processes that are already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until the processes exit; return those still alive at the deadline."""
    left = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = {pid for pid in left if is_alive(pid)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def terminate(pids: Iterable[int], timeout: float) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``timeout`` seconds."""
    pids = set(pids)
    signal_pids(pids, signal.SIGTERM)
    left = wait_gone(pids, timeout)
    if left:
        signal_pids(left, signal.SIGKILL)
        wait_gone(left, 5)


def cgroup_roots() -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy in our mount namespace."""
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, post = line.split(" - ", 1)
        if post.split()[0] in ("cgroup", "cgroup2"):
            roots.append(Path(pre.split()[4]))
    return roots


def cgroup_dirs(parent: str) -> list[Path]:
    """The directory of cgroup ``parent`` (e.g. "/pyolab-h1") in every hierarchy that has it."""
    return [d for d in (root / parent.strip("/") for root in cgroup_roots()) if d.is_dir()]


def cgroup_pids(parent: str) -> set[int]:
    """Every process in the cgroup subtree ``parent``, in any hierarchy."""
    pids: set[int] = set()
    for top in cgroup_dirs(parent):
        for procs in (d / "cgroup.procs" for d in _subtree(top)):
            try:
                pids.update(int(x) for x in procs.read_text().split())
            except OSError:
                continue
    return pids


def _subtree(top: Path) -> list[Path]:
    """Every directory under ``top`` and ``top`` itself, deepest first. A cgroup the kernel removes
    while it is listed (a container exiting) is skipped, not an error: os.walk ignores it."""
    return [Path(d) for d, _, _ in os.walk(top, topdown=False)]


def remove_cgroups(parent: str, timeout: float = 5) -> None:
    """Kill what is left in the cgroup subtree, then rmdir it bottom-up in every hierarchy."""
    signal_pids(cgroup_pids(parent), signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for top in cgroup_dirs(parent):
        for d in _subtree(top):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # Killed tasks leave the cgroup asynchronously: EBUSY for a moment is normal.
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.05)


def mounts_under(prefixes: Iterable[str]) -> list[str]:
    """Mount points in our mount namespace at or below any of the given paths."""
    prefixes = [p.rstrip("/") for p in prefixes]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split(" - ", 1)[0].split()[4].replace("\\040", " ")
        if any(target == p or target.startswith(p + "/") for p in prefixes):
            found.append(target)
    return found


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 20.0,
    what: str = "condition",
    proc: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
) -> object:
    """Poll ``predicate`` until truthy; fail early if ``proc`` exits, quoting the tail of ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except (OSError, http.client.HTTPException):
            result = None  # not listening yet, or not speaking HTTP yet
        if result:
            return result
        exited = proc is not None and proc.poll() is not None
        if exited or time.monotonic() >= deadline:
            tail = log_tail(log) if log else ""
            why = (
                f"exited with {proc.returncode}"
                if proc is not None and exited
                else f"not ready after {timeout:.0f}s"
            )
            raise RuntimeError(f"{what} {why}{tail}")
        time.sleep(0.05)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, formatted for an error message."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- last lines of {path} ---\n" + "\n".join(text)


# ICMP echo with DF set (IP_PMTUDISC_DO): the host has no iputils ping and busybox's cannot set DF.
# argv: destination, payload bytes, timeout seconds. Prints what came back, with the seconds it took:
# "reply <s> <IP length>", "emsgsize <s> <error>" (refused at once by the sender's own route MTU),
# "frag-needed <s> <mtu> from <address>" (an ICMP from the path), or "silence <timeout>" (a black hole).
# Exit 0 on a reply, 1 otherwise.
DF_PING_SCRIPT = r"""
import os, socket, struct, sys, time
dst, size, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
ident = os.getpid() & 0xFFFF
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
body = bytes(size)
pkt = struct.pack("!BBHHH", 8, 0, csum(struct.pack("!BBHHH", 8, 0, 0, ident, 1) + body), ident, 1) + body
start = time.monotonic()
try:
    s.sendto(pkt, (dst, 0))
except OSError as e:
    print(f"emsgsize {time.monotonic() - start:.4f} {e}" if e.errno == 90 else f"error 0 {e}")
    sys.exit(1)
while (left := start + timeout - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        break
    ihl = (data[0] & 0x0F) * 4
    kind, code, _, rid, mtu = struct.unpack("!BBHHH", data[ihl:ihl + 8])
    took = time.monotonic() - start
    if addr[0] == dst and kind == 0 and rid == ident:
        print(f"reply {took:.4f} IP length {len(data)}")
        sys.exit(0)
    if kind == 3 and code == 4:  # destination unreachable, fragmentation needed: rid is unused here
        print(f"frag-needed {took:.4f} {mtu} from {addr[0]}")
        sys.exit(1)
print(f"silence {timeout}")
sys.exit(1)
"""
