"""The kernel's neighbour tables (ARP for IPv4, NDP for IPv6), which every network namespace on a host
shares: each container's cache of its peers' MACs counts against one host-wide limit, `gc_thresh3`
(1024 by default). Past it the kernel refuses new entries ("neighbor table overflow!" in its log) and
containers stop reaching peers they had not talked to yet, on any network, while the rest still work.
An overlay of n containers that all talk to each other needs up to n x (n - 1) entries on one host, so
the default stops a network of about 32. The limits are visible and writable only in the host's initial
network namespace (where a managed plugin's agent runs)."""

import logging
from dataclasses import dataclass

from .procfs import read_sysctl, write_sysctl

log = logging.getLogger(__name__)

FAMILIES = ("ipv4", "ipv6")
# gc_thresh1 (no collection below it), gc_thresh2 (collection after 5 s above it) and gc_thresh3 (hard
# limit) as parts of the hard limit, in the kernel defaults' proportions (128, 512, 1024)
PROPORTIONS = {"gc_thresh1": 8, "gc_thresh2": 2, "gc_thresh3": 1}


@dataclass(frozen=True)
class Raised:
    name: str  # the sysctl's name under /proc/sys
    before: int
    after: int


def wanted_limits(size: int) -> dict[str, int]:
    """The thresholds for a hard limit of size entries."""
    return {name: size // part for name, part in PROPORTIONS.items()}


def ensure_neighbour_table(size: int) -> list[Raised] | None:
    """Raise the host's neighbour table thresholds to those of a size-entry table, never lowering one a
    host already set higher. None when this namespace does not show them (not the host's initial one);
    [] when nothing needed raising or /proc/sys could not be written (said by procfs)."""
    raised: list[Raised] = []
    for family in FAMILIES:
        for threshold, value in wanted_limits(size).items():
            name = f"net/{family}/neigh/default/{threshold}"
            try:
                before = int(read_sysctl(name))
            except FileNotFoundError:
                if family == "ipv6":
                    continue  # IPv6 turned off on the host
                return None
            if before >= value:
                continue
            if not write_sysctl(name, str(value)):
                return raised
            raised.append(Raised(name, before, value))
    return raised


def tune_neighbour_table(size: int) -> None:
    """ensure_neighbour_table, with what it did or could not do in the log (the agent's start)."""
    if size <= 0:
        return
    try:
        raised = ensure_neighbour_table(size)
    except OSError as exc:
        log.warning("the kernel's neighbour table limits could not be raised to %d entries: %s", size, exc)
        return
    if raised is None:
        log.info(
            "the kernel's neighbour table limits are not visible in this network namespace: the host's "
            "(sysctl net.ipv4.neigh.default.gc_thresh3, now shared by all its containers) apply"
        )
    elif raised:
        log.info(
            "raised the kernel's neighbour table limits (ARP/NDP entries of all containers on this host "
            "share them): %s",
            ", ".join(f"{r.name.replace('/', '.')} {r.before} -> {r.after}" for r in raised),
        )
