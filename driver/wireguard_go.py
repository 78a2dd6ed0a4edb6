"""wireguard-go, the userspace WireGuard, for kernels without the module: started, found again, stopped.

wireguard-go runs as its own daemon, never as the agent's child: started without -f it creates the TUN
device and the configuration socket, re-executes itself detached and the first process exits with the
setup's result. It is started in a new session, so signalling the agent's process group (a service
manager's or the lab's kill) leaves it running and the tunnel forwarding while the agent restarts.

The socket is /var/run/wireguard/<ifname>.sock (fixed in wireguard-go) in the mount namespace of the
process that starts it: the agent's. A restarted agent in the same mount namespace finds it there (each
lab host has its own /run), and the daemon's pid in /proc by name and network namespace. wireguard-go
exits when its device is deleted or its socket file removed.
A dead one leaves a socket that refuses connections and no device; the agent notices through alive()
and starts another (Tunnel.supervise). Two tunnels of one name in one mount namespace would share a socket
path: wireguard-go refuses the second ("unix socket in use"), so such tunnels need distinct names.
"""

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time

from .errors import DataplaneError

log = logging.getLogger(__name__)

SOCKET_DIR = "/var/run/wireguard"  # wireguard-go's own choice; it can't be told another
BINARY = "wireguard-go"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
# what wireguard-go takes from its environment: the agent's must not pass a stray one on
_WG_ENV = ("WG_TUN_FD", "WG_UAPI_FD", "WG_PROCESS_FOREGROUND", "LOG_LEVEL")


def socket_path(ifname: str) -> str:
    return os.path.join(SOCKET_DIR, f"{ifname}.sock")


def log_path(ifname: str) -> str:
    """Where the daemon's errors go (beside its socket; errors only, so it stays small)."""
    return os.path.join(SOCKET_DIR, f"{ifname}.log")


def netns_identity(netns: str | None) -> tuple[int, int]:
    """(device, inode) of a network namespace: its file's (netns path; None: this process's)."""
    info = os.stat(netns or "/proc/self/ns/net")
    return info.st_dev, info.st_ino


def daemon_pid(ifname: str, netns: str | None) -> int | None:
    """The pid of the wireguard-go running ifname in netns (the kernel allows one device of a name per
    namespace), None when there is none. Found in /proc: the socket's peer credentials name the process
    that listened, which is the first one, gone once the daemon runs."""
    wanted = netns_identity(netns)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
            if (
                len(argv) >= 3
                and os.path.basename(argv[0]) == BINARY.encode()
                and argv[-2] == ifname.encode()
                and netns_identity(f"/proc/{entry.name}/ns/net") == wanted
                and _running(int(entry.name))
            ):
                return int(entry.name)
        except OSError:  # exited meanwhile, or a kernel thread
            continue
    return None


def answers(ifname: str) -> bool:
    """Whether a wireguard-go accepts connections on ifname's socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(socket_path(ifname))
            return True
    except OSError:
        return False


def start_daemon(ifname: str, netns: str | None) -> int:
    """Start wireguard-go for ifname in netns (None: this process's namespace); returns its pid."""
    binary = shutil.which(BINARY)
    if binary is None:
        raise DataplaneError(
            f"{ifname}: no WireGuard kernel module and no {BINARY} on PATH (Debian: apt-get install {BINARY})"
        )
    command = [binary, ifname]
    if netns is not None:
        command = ["nsenter", f"--net={netns}", "--", *command]
    env = {name: value for name, value in os.environ.items() if name not in _WG_ENV}
    # LOG_LEVEL=error: the daemon keeps the first process's stdout, a file; a pipe would break when the agent
    # that read it dies (SIGPIPE), and the first process's setup errors land in the same file
    env["LOG_LEVEL"] = "error"
    os.makedirs(SOCKET_DIR, mode=0o755, exist_ok=True)
    with open(log_path(ifname), "ab") as output:
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env=env,
                cwd="/",
                start_new_session=True,
                timeout=START_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataplaneError(f"{ifname}: start {BINARY}: {exc}") from exc
    if result.returncode != 0:
        reason = last_words(ifname)
        if "socket in use" in reason:
            reason += f" (a wireguard-go for a device {ifname} in another network namespace holds the path)"
        raise DataplaneError(f"{ifname}: start {BINARY}: exit {result.returncode}: {reason}")
    pid = daemon_pid(ifname, netns)
    if pid is None or not answers(ifname):  # the socket listens before the first process exits
        raise DataplaneError(f"{ifname}: {BINARY} exited right after starting: {last_words(ifname)}")
    log.info("%s: started %s, pid %d", ifname, BINARY, pid)
    return pid


def stop_daemon(ifname: str, pid: int) -> None:
    """SIGTERM the daemon and wait until it is gone (it deletes its device and socket on the way out)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while _running(pid):
        if time.monotonic() > deadline:
            log.warning("%s: %s pid %d ignored SIGTERM; killed", ifname, BINARY, pid)
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)


def forget(ifname: str) -> None:
    """Remove what a stopped wireguard-go leaves: its log, and a socket file nobody answers on."""
    if not answers(ifname):
        for path in (log_path(ifname), socket_path(ifname)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def last_words(ifname: str) -> str:
    """The tail of the daemon's log, for error messages."""
    try:
        with open(log_path(ifname), errors="replace") as output:
            lines = [line.strip() for line in output.read().splitlines() if line.strip()]
    except FileNotFoundError:
        return "(no log)"
    # the banner telling that the kernel has WireGuard is drawn with box characters: not the reason
    reasons = [line for line in lines if not line.startswith(("│", "┌", "└"))]
    return " / ".join(reasons[-3:]) or "(nothing logged)"


def _running(pid: int) -> bool:
    """Whether pid is a live process (a zombie, dead but not reaped by its parent, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
