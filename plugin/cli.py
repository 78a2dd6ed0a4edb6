"""The ``pyoverlay`` command: ``serve`` runs the agent and ``stop`` stops it; ``hosts``,
``status``, ``ps`` and ``forget-host`` are for operators; ``expose`` and ``hide`` give this host an
address on a network; ``daemon-config`` prints the daemon setting names need."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter

from . import cli_expose, cli_status, logs, pidfile
from . import settings as settings_mod
from .nameservice.upstreams import RESOLV_CONF, fallback_servers
from .version import version

STOP_TIMEOUT = 15.0  # seconds; gunicorn gives its worker 5 s to finish, then kills it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyoverlay", description="Docker overlay network plugin")
    parser.add_argument("--version", action="version", version=f"pyoverlay {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the agent: the plugin API on a unix socket")
    settings_mod.add_arguments(serve)
    stop = sub.add_parser("stop", help="stop the agent running on this state directory")
    settings_mod.add_arguments(stop, ["state_dir"])
    hosts = sub.add_parser("hosts", help="list hosts: alive or not, and their endpoints")
    settings_mod.add_arguments(hosts, settings_mod.STORE_SETTINGS)
    forget = sub.add_parser("forget-host", help="remove a dead host's endpoints, addresses and bindings")
    forget.add_argument("host_id")
    settings_mod.add_arguments(forget, settings_mod.STORE_SETTINGS)
    daemon = sub.add_parser(
        "daemon-config", help="print the daemon.json setting this host's dockerd needs (names across hosts)"
    )
    settings_mod.add_arguments(daemon, ["dns_address", "dns_upstreams"])
    rotate = sub.add_parser(
        "rotate-key", help="give this host a new WireGuard key pair (encrypted networks); peers follow"
    )
    settings_mod.add_arguments(rotate, ["socket", "state_dir"])
    cli_expose.add_parsers(sub)
    cli_status.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_mod.load(args)
    logs.configure(settings.log_level, settings.log_format)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its debug output is every netlink message
    if args.command == "serve":
        from .server import serve as run

        run(settings)
        return 0
    if args.command == "stop":
        return _stop(settings.state_dir)
    if args.command == "rotate-key":
        return _rotate_key(args, settings)
    if args.command == "daemon-config":
        print(json.dumps(daemon_config(settings), indent=2))
        return 0
    return _operate(args, settings)


def daemon_config(settings: settings_mod.Settings, resolv_conf: str = RESOLV_CONF) -> dict[str, object]:
    """The one daemon setting pyoverlay needs: Docker's embedded DNS forwards the names it does not know
    to the daemon's `dns` servers, so naming the name service there makes other hosts' containers
    resolvable. After it, the host's own resolvers a container can reach: Docker asks them when the
    name service does not answer (the agent stopped). Nothing when the name service is off."""
    if not settings.dns_address:
        return {}
    fallbacks = fallback_servers(settings.dns_upstreams, settings.dns_address, resolv_conf)
    return {"dns": [settings.dns_address, *fallbacks]}


def _rotate_key(args: argparse.Namespace, settings: settings_mod.Settings) -> int:
    """Ask this host's agent (found as `pyoverlay status` finds it, a managed plugin's too) for a new key."""
    from . import status
    from .agent_client import ROTATE_KEY_PATH, AgentUnreachable, call

    configured = getattr(args, "socket", None) or os.environ.get("SOCKET")
    local = status.local_status(
        status.agent_sockets(configured, settings.socket), status.read_host_id(settings.state_dir)
    )
    if "error" in local:
        print(f"pyoverlay: {local['error']}", file=sys.stderr)
        return 1
    try:
        answer = call(local["socket"], ROTATE_KEY_PATH)
    except (AgentUnreachable, RuntimeError) as exc:
        print(f"pyoverlay: {exc}", file=sys.stderr)
        return 1
    key = answer["PublicKey"]
    print(f"this host's tunnel key is new; its public key, published to the other hosts: {key}")
    return 0


def _stop(state_dir: str) -> int:
    try:
        pid = pidfile.running_agent(state_dir)
        took = pidfile.stop(pid, STOP_TIMEOUT)
    except pidfile.NoAgent as exc:
        print(f"pyoverlay: {exc}", file=sys.stderr)
        return 1
    except ProcessLookupError:
        print(f"the pyoverlay agent on {state_dir} had exited already")
        return 0
    except PermissionError as exc:
        print(f"pyoverlay: {exc}: run as the agent's user (root)", file=sys.stderr)
        return 1
    if took is None:
        print(
            f"pyoverlay: sent SIGTERM to the agent (pid {pid}), still running after {STOP_TIMEOUT:.0f} s; "
            f"`kill -KILL {pid}` ends it at once",
            file=sys.stderr,
        )
        return 1
    print(f"stopped the pyoverlay agent (pid {pid}) on {state_dir}: SIGTERM, exited after {took:.1f} s")
    return 0


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
        if args.command in cli_expose.COMMANDS:
            return cli_expose.run(args, settings, store)
        if args.command in cli_status.COMMANDS:
            return cli_status.run(args, settings, store)
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
            if not store.knows_host(args.host_id):
                print(
                    f"pyoverlay: no host {args.host_id} in the store (pyoverlay hosts lists them)",
                    file=sys.stderr,
                )
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
