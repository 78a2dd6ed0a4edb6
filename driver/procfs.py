"""Writing kernel settings under /proc/sys, also from a managed plugin's container, where Docker mounts
/proc/sys read-only: the agent then mounts a procfs of its own (it holds CAP_SYS_ADMIN) and writes there."""

import ctypes
import errno
import logging
import os
import threading

log = logging.getLogger(__name__)

# where the agent mounts a procfs of its own when /proc/sys is read-only (a managed plugin's container)
PRIVATE_PROC = "/run/pyoverlay-proc"
PROC = "/proc"

_proc_lock = threading.Lock()
_proc_state: list[str | None] = []  # [] untried, [path] mounted, [None] impossible


def read_sysctl(name: str) -> str:
    """The value of /proc/sys/<name>; FileNotFoundError when this namespace does not show it.

    Names under net/ resolve against the calling thread's network namespace."""
    with open(f"{PROC}/sys/{name}") as sysctl:
        return sysctl.read().strip()


def write_sysctl(name: str, value: str) -> bool:
    """Write /proc/sys/<name>, through the private procfs when /proc/sys is read-only.

    Returns False (said once) when neither is writable; FileNotFoundError when the setting is absent."""
    try:
        _write(f"{PROC}/sys/{name}", value)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES):
            raise
    proc = private_proc()
    if proc is None:
        return False
    _write(f"{proc}/sys/{name}", value)
    return True


def _write(path: str, value: str) -> None:
    with open(path, "r+") as sysctl:
        if sysctl.read().strip() != value:
            sysctl.seek(0)
            sysctl.write(value)


def private_proc() -> str | None:
    """A procfs mounted by the agent itself, whose /sys is writable. None (said once) when mounting is
    not allowed either."""
    with _proc_lock:
        if not _proc_state:
            os.makedirs(PRIVATE_PROC, exist_ok=True)
            libc = ctypes.CDLL(None, use_errno=True)
            mounted = (
                os.path.ismount(PRIVATE_PROC)
                or libc.mount(b"proc", PRIVATE_PROC.encode(), b"proc", 0, None) == 0
            )
            if not mounted:
                log.warning(
                    "/proc/sys is read-only and a private procfs can't be mounted (%s): kernel settings "
                    "the agent would tune stay as they are",
                    os.strerror(ctypes.get_errno()),
                )
            _proc_state.append(PRIVATE_PROC if mounted else None)
        return _proc_state[0]
