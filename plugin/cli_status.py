"""`pyoverlay status` and `pyoverlay ps` (like `weave status` / `weave ps`): the cluster from the store,
this host from its agent's socket. They only read."""

from __future__ import annotations

import argparse
import json
import os
import sys

from kvstore import Store, StoreError

from . import settings as settings_mod
from . import status
from .status_text import format_ps, format_status

COMMANDS = ("status", "ps")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    show = sub.add_parser("status", help="this host, every host and every network, with pool use")
    show.add_argument("--json", action="store_true", help="print JSON instead of tables")
    show.add_argument(
        "--graph",
        metavar="FILE",
        default=None,
        help="also draw hosts, networks and containers to FILE (.svg or .png; needs graphviz)",
    )
    settings_mod.add_arguments(show, [*settings_mod.STORE_SETTINGS, "socket"])
    ps = sub.add_parser("ps", help="every endpoint: container, host, addresses and MAC")
    ps.add_argument(
        "network", nargs="?", default=None, help="only this network (name, or 12+ characters of id)"
    )
    ps.add_argument("--json", action="store_true", help="print JSON instead of a table")
    settings_mod.add_arguments(ps, settings_mod.STORE_SETTINGS)


def run(args: argparse.Namespace, settings: settings_mod.Settings, store: Store) -> int:
    if args.command == "ps":
        try:
            endpoints = status.collect_endpoints(store, args.network)
        except LookupError as exc:
            print(f"pyoverlay: {exc.args[0]}", file=sys.stderr)
            return 1
        print(
            json.dumps({"endpoints": endpoints}, indent=2) if args.json else format_ps(endpoints),
            end="\n" if args.json else "",
        )
        return 0
    configured = getattr(args, "socket", None) or os.environ.get("SOCKET")
    local = status.local_status(
        status.agent_sockets(configured, settings.socket), status.read_host_id(settings.state_dir)
    )
    cluster, error = None, ""
    try:
        cluster = status.collect_cluster(store)
    except StoreError as exc:
        error = str(exc)
    if args.graph:
        if cluster is None:
            print(f"pyoverlay: no picture: store not read: {error}", file=sys.stderr)
            return 1
        from .status_graph import GraphUnavailable, draw

        try:
            draw(cluster, status.collect_endpoints(store), args.graph, local.get("host_id", ""))
        except (GraphUnavailable, ValueError) as exc:
            print(f"pyoverlay: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(
            json.dumps(
                {"local": local, "cluster": cluster, **({"store_error": error} if error else {})}, indent=2
            )
        )
    else:
        sys.stdout.write(format_status(cluster, local, error))
    return 0 if cluster is not None else 1
