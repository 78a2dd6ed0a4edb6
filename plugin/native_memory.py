"""glibc malloc settings for the long-lived agent, applied once in the master so the forked worker has them.

pyroute2 ≥ 0.9 reads netlink through asyncio, whose datagram transport asks for a 256 KiB buffer per
received message and shrinks it to the message's size. glibc serves the first such buffers with mmap,
then raises its mmap threshold when one is freed (the "dynamic threshold"); from then on every 256 KiB
buffer is carved from the top of a malloc arena and shrunk in place, the small remainders pin the arena's
top, and the worker's RSS crept by ~3 MiB per 1,000 plugin requests (docs/benchmarks.md). A fixed
threshold keeps those buffers in their own mappings, which go back to the kernel when freed.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value; setting it turns the dynamic threshold off
OPERATOR_SETTING = "MALLOC_MMAP_THRESHOLD_"  # glibc's tunable in the environment: the operator chose


def fix_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold; False where there is no glibc mallopt or the operator set one."""
    if OPERATOR_SETTING in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:  # musl's mallopt is a stub answering 0
        log.info("malloc: mmap threshold not settable here; RSS may grow with netlink traffic")
        return False
    return True
