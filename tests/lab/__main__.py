"""``python -m tests.lab up|down|status|shell``: a lab that outlives the command, for hands-on work.

State lives under <repo>/.lab/<name>/ (docker data, logs) and /run/<name>/ (sockets, pids).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from .engines import engine
from .lab import REPO, Lab, LabUnavailable
from .system import is_alive
from .teardown import RUN_ROOT, cleanup, read_state


def main(argv: list[str] | None = None) -> int:
    """Entry point of the lab CLI."""
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description="pyoverlay multi-host lab")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring a lab up (replacing one of the same name) and leave it running")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--mtu", type=int, default=1500, help="underlay MTU")
    up.add_argument("--underlay", default="10.99.0.0/24", help="underlay subnet (.254 is etcd)")
    up.add_argument("--no-etcd", action="store_true", help="no etcd: agents use their embedded store")
    up.add_argument("--no-agents", action="store_true", help="do not start pyoverlay agents")
    up.add_argument("--agent-cmd", help="agent command line (default: .venv/bin/pyoverlay serve)")
    up.add_argument("--keep", action="store_true", help="keep .lab/<name> (logs, data) at down")
    up.add_argument(
        "--engine",
        help="Docker engine of every host: 28, 26 (scripts/fetch-engine.sh), system; "
        "default $PYOVERLAY_ENGINE, else the system's",
    )
    for p in (
        up,
        sub.add_parser("down", help="tear a lab down"),
        sub.add_parser("status", help="show a lab"),
    ):
        p.add_argument("--name", default="pyolab")
    shell = sub.add_parser("shell", help="a shell (or command) inside a host: h1, h2, ... or ul")
    shell.add_argument("host")
    shell.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run instead of a shell")
    shell.add_argument("--name", default="pyolab")
    args = parser.parse_args(argv)

    if args.command == "up":
        return _up(args)
    if args.command == "down":
        cleanup(args.name)
        print(f"lab {args.name}: down")
        return 0
    if args.command == "status":
        return _status(args.name)
    return _shell(args.name, args.host, args.cmd)


def _up(args: argparse.Namespace) -> int:
    agent_cmd = shlex.split(args.agent_cmd) if args.agent_cmd else None
    lab = Lab(
        args.hosts,
        args.name,
        args.mtu,
        etcd=not args.no_etcd,
        workdir=REPO / ".lab" / args.name,
        underlay=args.underlay,
        agent_command=agent_cmd,
        keep=args.keep,
        detached=True,
        engine=args.engine,
    )
    try:
        lab.up()
    except LabUnavailable as exc:
        print(f"cannot run a lab here: {exc}", file=sys.stderr)
        return 2
    print(
        f"lab {lab.name} up in {lab.timings['up']:.1f}s: {len(lab.hosts)} hosts on {lab.underlay} "
        f"(mtu {lab.mtu}), etcd {lab.etcd_endpoint or 'none'}, image {lab.image}, "
        f"engine {lab.hosts[0].engine.label}"
    )
    failed = 0
    if not args.no_agents:
        for h in lab.hosts:  # start all, then wait for each: the agents boot in parallel
            h.start_agent(wait=False)
        deadline = time.monotonic() + 20
        for h in lab.hosts:
            try:
                h.wait_agent(max(1.0, deadline - time.monotonic()))
            except RuntimeError as exc:
                failed += 1
                print(f"{h.name}: agent failed: {exc}", file=sys.stderr)
    for h in lab.hosts:
        agent = "no agent" if h.agent is None else f"agent pid {h.agent.pid}, log {h.workdir / 'agent.log'}"
        print(f"  {h.name} {h.address}  DOCKER_HOST={h.docker_host} {h.engine.docker} ps   ({agent})")
    print(f"  plugin dirs: {lab.run_dir}/hN/plugins   dockerd logs: {lab.workdir}/hN/dockerd.log")
    cli = f"python -m tests.lab {{}} --name {lab.name}"
    print(f"shell: {cli.format('shell')} h1    down: {cli.format('down')}")
    return 1 if failed else 0


def _status(name: str) -> int:
    state = read_state(name)
    if not state:
        print(f"lab {name}: not up")
        return 1
    engines = state.get("engines") or {}
    print(f"lab {name}: underlay {state.get('underlay')}, etcd {state.get('etcd_endpoint') or 'none'}")
    addresses = state.get("hosts_addresses") or {}
    for host in state.get("hosts", []):  # type: ignore[union-attr]
        pids = {kind: _pid(RUN_ROOT / name / str(host) / f"{kind}.pid") for kind in ("anchor", "agent")}
        alive = {k: "up" if p and is_alive(p) else "down" for k, p in pids.items()}
        sock = RUN_ROOT / name / str(host) / "docker.sock"
        print(
            f"  {host} {addresses.get(host)}  DOCKER_HOST=unix://{sock}  "
            f"namespaces {alive['anchor']}, agent {alive['agent']}, engine {engines.get(host, 'system')}"  # type: ignore[union-attr]
        )
    return 0


def _shell(name: str, host: str, cmd: list[str]) -> int:
    run_dir = RUN_ROOT / name
    command = cmd or [os.environ.get("SHELL", "/bin/bash")]
    if host == "ul":
        os.execvp("nsenter", ["nsenter", f"--net=/run/netns/{name}-ul", "--", *command])
    pid = _pid(run_dir / host / "anchor.pid")
    if pid is None or not is_alive(pid):
        print(f"lab {name}: host {host} is not up", file=sys.stderr)
        return 1
    os.environ["DOCKER_HOST"] = f"unix://{run_dir / host}/docker.sock"
    version = (read_state(name).get("engines") or {}).get(host, "system")  # type: ignore[union-attr]
    if version != "system":  # its client (and containerd, ctr) first
        os.environ["PATH"] = f"{engine(version).bin_dir}:{os.environ.get('PATH', '')}"
    os.environ["PS1"] = rf"[{name}/{host}] \w# "
    ns = f"/proc/{pid}/ns"
    os.execvp(
        "nsenter", ["nsenter", f"--net={ns}/net", f"--mount={ns}/mnt", f"--wd={Path.cwd()}", "--", *command]
    )
    return 1  # not reached


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
