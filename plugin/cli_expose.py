"""`pyoverlay expose NETWORK` and `pyoverlay hide NETWORK`: this host's own address on a network. They
write the store directly, with the agent's settings; the running agent puts the address on the bridge."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvstore import Store

from . import settings as settings_mod
from .errors import PluginError
from .services.exposure import ExposureService

COMMANDS = ("expose", "hide")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    expose = sub.add_parser("expose", help="give this host its own address on a network (like weave expose)")
    expose.add_argument("network", help="the network's name (or at least 12 characters of its id)")
    expose.add_argument("--ip", default=None, help="this address, not the next free one of the network")
    settings_mod.add_arguments(expose, settings_mod.STORE_SETTINGS)
    hide = sub.add_parser("hide", help="take this host's address off a network and free it")
    hide.add_argument("network", help="the network's name (or at least 12 characters of its id)")
    settings_mod.add_arguments(hide, settings_mod.STORE_SETTINGS)


def run(args: argparse.Namespace, settings: settings_mod.Settings, store: Store) -> int:
    """Run expose or hide; StoreError goes to the caller."""
    path = Path(settings.state_dir) / "host-id"
    try:
        host_id = path.read_text().strip()
    except FileNotFoundError:
        print(f"pyoverlay: no {path}: the agent has never run with this STATE_DIR", file=sys.stderr)
        return 1
    service = ExposureService(store, host_id)
    try:
        if args.command == "expose":
            print(service.expose(args.network, args.ip).address)
        elif (freed := service.hide(args.network)) is not None:
            print(f"{freed} is no longer this host's address on {args.network}")
        else:
            print(f"this host has no address on {args.network}")
    except PluginError as exc:
        print(f"pyoverlay: {exc}", file=sys.stderr)
        return 1
    return 0
