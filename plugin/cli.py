"""The ``pyoverlay`` command: ``serve`` runs the agent; ``hosts`` and ``forget-host`` are for operators."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

from . import settings as settings_mod


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyoverlay", description="Docker overlay network plugin")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the agent: the plugin API on a unix socket")
    hosts = sub.add_parser("hosts", help="list hosts: alive or not, and their endpoints")
    forget = sub.add_parser("forget-host", help="remove a dead host's endpoints, addresses and bindings")
    forget.add_argument("host_id")
    for command in (serve, hosts, forget):
        settings_mod.add_arguments(command)
    args = parser.parse_args(argv)
    settings = settings_mod.load(args)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its debug output is every netlink message
    if args.command == "serve":
        from .server import serve as run

        run(settings)
        return 0
    return _operate(args, settings)


def _operate(args: argparse.Namespace, settings: settings_mod.Settings) -> int:
    from kvstore import StoreError, open_store

    store = open_store(
        list(settings.etcd_endpoints),
        settings.state_dir,
        ca_cert=settings.etcd_ca_cert or None,
        cert_cert=settings.etcd_cert or None,
        cert_key=settings.etcd_key or None,
    )
    try:
        if args.command == "hosts":
            alive = {h.host_id: h for h in store.list_hosts()}
            endpoints = Counter(e.host_id for e in store.list_endpoints())
            print(f"{'HOST':<18} {'STATE':<6} {'ADDRESS':<16} {'ENDPOINTS':>9}")
            for host_id in sorted(set(alive) | set(endpoints)):
                address = alive[host_id].address if host_id in alive else "-"
                state = "alive" if host_id in alive else "silent"
                print(f"{host_id:<18} {state:<6} {address:<16} {endpoints[host_id]:>9}")
        else:
            if any(h.host_id == args.host_id for h in store.list_hosts()):
                print(f"pyoverlay: host {args.host_id} is alive; stop its agent first", file=sys.stderr)
                return 1
            removed = store.forget_host(args.host_id)
            print(f"forgot host {args.host_id}: {removed} endpoint(s) removed")
    except StoreError as exc:
        print(f"pyoverlay: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
