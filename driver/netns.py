"""Each network's own network namespace, which holds its bridge and VXLAN device (as Docker's overlay does).

Frames bridged inside it never meet the host's iptables: dockerd turns br_netfilter on, which would send
every bridged frame of the host's bridges through the host's FORWARD chain and conntrack; inside the
network's namespace it is off. The namespace is a bind mount under a directory (``/run/netns`` unless the
setting says otherwise), so it outlives the agent: containers keep their traffic while it restarts.
"""

import logging
import os
import re
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import netns as pyroute2_netns

from .errors import DataplaneError
from .links import describe
from .names import check_vni
from .procfs import write_sysctl

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
DEFAULT_SCOPE = "pyoverlay"  # a network's namespace is <scope>-<vni>
# br_netfilter's switches, per namespace since Linux 5.3; absent when the module is not loaded
BR_NETFILTER_SYSCTLS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables")

T = TypeVar("T")


def network_netns(directory: str, scope: str, vni: int) -> str:
    """The path of a network's namespace."""
    return os.path.join(directory, f"{scope}-{check_vni(vni)}")


def network_vnis(directory: str, scope: str) -> set[int]:
    """The VNIs whose namespace exists in directory."""
    pattern = re.compile(rf"^{re.escape(scope)}-([1-9][0-9]{{0,7}})$")
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set()
    return {int(match.group(1)) for name in names if (match := pattern.match(name))}


def identity(path: str) -> int | None:
    """The namespace's inode behind path (it changes when the namespace is made anew), or None if absent.

    A file that is no longer a namespace's mount (the host rebooted) counts as absent."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return None
    return inode if os.path.ismount(path) else None


def ensure_netns(path: str) -> bool:
    """Make the namespace exist with br_netfilter off inside; returns whether it was created."""
    created = False
    if identity(path) is None:
        if os.path.lexists(path):
            # what a reboot, or a managed plugin's restart without the state directory shared with the
            # host, left of a namespace: pyroute2 would refuse the name
            log.warning(
                "%s: the network's namespace is gone (host rebooted, or a managed plugin restarted without "
                "/var/lib/pyoverlay as a shared mount point of its own: docs/install.md); made anew, "
                "containers started before it need a restart",
                path,
            )
            os.unlink(path)
        try:
            pyroute2_netns.create(path)
            created = True
        except Exception as exc:  # pyroute2's child process reports OSError and its own types
            if identity(path) is None:  # not merely made by another thread or agent meanwhile
                raise DataplaneError(f"netns {path}: create: {describe(exc)}") from exc
    run_in_netns(path, _bridge_netfilter_off)
    return created


def remove_netns(path: str) -> None:
    """Unmount and unlink the namespace's file; the kernel frees it once nothing holds it."""
    if identity(path) is None:
        return
    try:
        pyroute2_netns.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DataplaneError(f"netns {path}: remove: {describe(exc)}") from exc


def run_in_netns(path: str, call: Callable[[], T]) -> T:
    """Run call in a short-lived thread that entered the namespace (setns moves one thread only, and
    that thread never comes back to serve anything else)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def enter_and_call() -> None:
        try:
            pyroute2_netns.setns(path, flags=0)
            result.append(call())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=enter_and_call, name="netns-call", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise DataplaneError(f"netns {path}: {describe(failure[0])}") from failure[0]
    return result[0]


def _bridge_netfilter_off() -> None:
    # /proc/sys/net resolves against the opening thread's namespace
    for name in BR_NETFILTER_SYSCTLS:
        try:
            if not write_sysctl(f"net/bridge/{name}", "0"):
                return  # br_netfilter stays on here; the namespace has no iptables rules to pass
        except FileNotFoundError:
            return  # br_netfilter not loaded: bridged frames meet no iptables anyway
