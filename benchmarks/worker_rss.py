"""The agent worker's resident memory over many plugin requests, on a one-host lab with the embedded store:

    sudo .venv/bin/python -m benchmarks.worker_rss [--requests 100000] [--every 10000] [--env K=V …]

The request mix is benchmarks.single_host's (an endpoint's whole life plus capability calls, 10 requests
per round). Prints the worker's RSS, anonymous memory, thread count and mapping count after the first
1,000 requests and every ``--every`` after, then the growth from 1,000 to the end.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.single_host import request_mix, rss_kib
from tests.lab import Lab, LabHost
from tests.plugin_client import PluginClient

WARMUP = 1000


def worker_pid(h: LabHost) -> int:
    """The gunicorn worker: the agent's process that is not the master (the largest pid found)."""
    pids = sorted(rss_kib(h))
    return pids[-1]


def sample(pid: int) -> dict[str, int]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    anon = next(int(line.split()[1]) for line in rollup if line.startswith("Anonymous:"))
    maps = len(Path(f"/proc/{pid}/maps").read_text().splitlines())
    return {
        "rss": int(status["VmRSS"].split()[0]),
        "anon": anon,
        "threads": int(status["Threads"]),
        "maps": maps,
    }


def show(done: int, s: dict[str, int], rate: float) -> None:
    print(
        f"{done:>7} requests: RSS {s['rss'] / 1024:6.1f} MiB, anon {s['anon'] / 1024:6.1f} MiB, "
        f"{s['threads']} threads, {s['maps']} mappings ({rate:.0f} req/s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--env", action="append", default=[], help="extra agent environment, K=V")
    args = parser.parse_args()
    env = {"LOG_LEVEL": "info", **dict(kv.split("=", 1) for kv in args.env)}
    with Lab(1, name="pyorss", etcd=False) as lab:
        h = lab.hosts[0]
        h.start_agent(extra_env=env)
        h.create_network("pyo", "--subnet", "10.62.0.0/24")
        network_id = h.docker("network", "inspect", "-f", "{{.Id}}", "pyo").stdout.strip()
        client = PluginClient(str(h.agent_socket))
        pid = worker_pid(h)
        show(0, sample(pid), 0)
        done, start = 0, time.monotonic()
        first = None
        while done < args.requests:
            step = WARMUP if done == 0 else min(args.every, args.requests - done)
            step_start = time.monotonic()
            request_mix(client, network_id, "10.62.0.0/24", step)
            done += step
            s = sample(pid)
            show(done, s, step / (time.monotonic() - step_start))
            first = first or s
        assert worker_pid(h) == pid, "the worker was replaced during the run"
        assert first is not None
        last = sample(pid)
        print(
            f"worker RSS after {WARMUP}: {first['rss'] / 1024:.1f} MiB, after {done}: "
            f"{last['rss'] / 1024:.1f} MiB, growth {(last['rss'] - first['rss']) / 1024:+.1f} MiB "
            f"in {time.monotonic() - start:.0f} s; env {env}"
        )


if __name__ == "__main__":
    main()
