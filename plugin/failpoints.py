"""Failpoints: named places in request handling where a fault test makes the agent crash, in the manner of
etcd's gofail and FreeBSD's fail(9). A test facility, never for production: they are enabled only by the
environment variable PYOVERLAY_FAILPOINTS, read once when the agent starts, e.g.

    PYOVERLAY_FAILPOINTS="CreateEndpoint.after_store=kill,Join.after_kernel=kill"

Action ``kill`` SIGKILLs the agent's whole process group: the gunicorn master goes with its worker (a
worker's crash alone would be respawned by the master, which is not the crash being tested). Unset, hit()
is one truthiness test of an empty dict."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

ENV = "PYOVERLAY_FAILPOINTS"
ACTIONS = ("kill",)

# Every point the code has, so a typo in the variable is refused instead of silently never firing.
POINTS = frozenset(
    f"{request}.{where}"
    for request, places in {
        "CreateNetwork": ("after_store", "after_kernel"),
        "DeleteNetwork": ("after_store", "after_kernel"),
        "CreateEndpoint": ("after_store", "after_kernel"),
        "DeleteEndpoint": ("after_kernel", "after_store"),
        "Join": ("after_kernel",),
        "Leave": ("before_answer",),
        "RequestPool": ("after_store",),
        "ReleasePool": ("after_store",),
        "RequestAddress": ("after_store",),
        "ReleaseAddress": ("after_store",),
    }.items()
    for where in places
)

_enabled: dict[str, str] = {}


def parse(value: str) -> dict[str, str]:
    """``name=action[,name=action…]`` → {name: action}; ValueError naming what is wrong."""
    points: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, action = item.partition("=")
        if not sep or name not in POINTS or action not in ACTIONS:
            raise ValueError(
                f"{ENV}: {item!r} is not NAME=ACTION with NAME one of {sorted(POINTS)} and ACTION one of "
                f"{list(ACTIONS)}"
            )
        points[name] = action
    return points


def configure(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Enable the points the environment names (none when it names none); called once at start-up."""
    _enabled.clear()
    _enabled.update(parse(environ.get(ENV, "")))
    if _enabled:
        print(f"pyoverlay: failpoints enabled (test facility): {_enabled}", file=sys.stderr, flush=True)
    return dict(_enabled)


def hit(name: str) -> None:
    """Run the action enabled at ``name``, if any."""
    if _enabled and name in _enabled:
        _fire(name)


def _fire(name: str) -> None:
    print(f"pyoverlay: failpoint {name}: kill", file=sys.stderr, flush=True)
    os.killpg(os.getpgrp(), signal.SIGKILL)
