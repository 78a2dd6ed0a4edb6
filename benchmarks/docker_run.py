"""`docker run --rm … true` on a pyoverlay network vs a bridge network, interleaved, and the plugin's own
share of each request; with a baseline (a checkout with its own .venv, e.g. `git worktree add`), the
agents of this tree and of the baseline take turns in blocks in the same lab, so both versions' ratios
come from one invocation under the same load."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.plugin_timings import HOT_PATH, read_timings
from tests.lab import Lab, LabHost
from tests.lab.lab import default_agent_command

BLOCKS = 4  # turns per version with a baseline


@dataclass
class Runs:
    pyoverlay: list[float] = field(default_factory=list)
    bridge: list[float] = field(default_factory=list)
    shares: dict[str, list[float]] = field(default_factory=dict)  # request type -> every block's p50, p99

    def ratio(self) -> float:
        return statistics.median(self.pyoverlay) / statistics.median(self.bridge)


def agent_command(checkout: Path | None) -> list[str]:
    return default_agent_command() if checkout is None else [str(checkout / ".venv/bin/pyoverlay"), "serve"]


def compare(
    lab: Lab,
    h: LabHost,
    networks: tuple[str, str],
    runs: int,
    baseline: Path | None = None,
    agent_env: dict[str, str] | None = None,
) -> dict[str, Runs]:
    """{"this tree": Runs, ["baseline": Runs]}: runs of each network per version, on host h; with a
    baseline every agent of the lab is restarted on each turn (the store and devices stay)."""
    versions = {"this tree": None} | ({"baseline": baseline} if baseline else {})
    results = {name: Runs() for name in versions}
    blocks = BLOCKS if baseline else 1
    for block in range(blocks):
        order = list(versions.items()) if block % 2 == 0 else list(versions.items())[::-1]
        for name, checkout in order:
            if baseline:
                for host in lab.hosts:
                    host.stop_agent()
                for host in lab.hosts:
                    host.start_agent(extra_env=agent_env, command=agent_command(checkout))
                for network in networks:  # warm: the agent's first calls open its sockets
                    h.docker("run", "--rm", "--network", network, lab.image, "true")
            read_timings(str(h.agent_socket), reset=True)
            share = block_runs(lab, h, networks, runs // blocks + (block < runs % blocks), results[name])
            for path, figures in share.items():
                results[name].shares.setdefault(path, []).append((figures["p50_ms"], figures["p99_ms"]))
    return results


def block_runs(lab: Lab, h: LabHost, networks: tuple[str, str], runs: int, into: Runs) -> dict[str, Any]:
    for _ in range(runs):  # interleaved, so drift on the machine hits both alike
        for network, times in zip(networks, (into.pyoverlay, into.bridge), strict=True):
            start = time.monotonic()
            h.docker("run", "--rm", "--network", network, lab.image, "true")
            times.append(time.monotonic() - start)
    return read_timings(str(h.agent_socket))


def report(results: dict[str, Runs], indent: str = "") -> None:
    for name, r in results.items():
        print(
            f"{indent}{name}: docker run --rm … true, median of {len(r.pyoverlay)}: pyoverlay "
            f"{statistics.median(r.pyoverlay):.3f} s, bridge {statistics.median(r.bridge):.3f} s, "
            f"ratio {r.ratio():.2f}"
        )
        print(f"{indent}  plugin's own share per request (median over blocks of each block's p50 / p99)")
        total = 0.0
        for path in [p for p in HOT_PATH if p in r.shares] + sorted(p for p in r.shares if p not in HOT_PATH):
            p50 = statistics.median(f[0] for f in r.shares[path])
            p99 = statistics.median(f[1] for f in r.shares[path])
            total += p50 if path in HOT_PATH else 0.0
            print(f"{indent}    {path:<38} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms")
        print(f"{indent}    sum of p50 over one container's life: {total:.1f} ms")
    if "baseline" in results:
        change = results["this tree"].ratio() / results["baseline"].ratio()
        print(f"{indent}ratio, this tree / baseline: {change:.3f}")
