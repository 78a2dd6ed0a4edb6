"""The ``pyoverlay`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from . import settings as settings_mod


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyoverlay", description="Docker overlay network plugin")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the agent: the plugin API on a unix socket")
    settings_mod.add_arguments(serve)
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


if __name__ == "__main__":
    sys.exit(main())
