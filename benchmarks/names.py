"""Name lookups across hosts, on a two-host lab whose dockerds have the setting `pyoverlay daemon-config`
prints: figures and ratios against Docker's own DNS, from one run.

    sudo .venv/bin/python -m benchmarks.names [--queries 2000] [--trials 20] [--engine ENGINE]

- lookup latency, p50/p99, from inside a container on host A (a client in its network namespace asking
  127.0.0.11, as the container's resolver does): a name on host B (Docker's embedded DNS forwards it to
  pyoverlay's name service) vs a name on host A (answered by Docker's embedded DNS itself);
- time from `docker run -d` returning on host B until the new name resolves on host A (p50/p99).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.lab import Lab, LabHost
from tests.lab.names import lab_daemon_json, start_upstream

from .lab_helpers import ip_of, pct

SLEEP = ("sleep", "3600")
REPO = Path(__file__).resolve().parents[1]

# Runs in the container's network namespace with the host's Python and the repository's dnspython.
LATENCY = r"""
import json, sys, time
import dns.message, dns.query
name, count, server = sys.argv[1], int(sys.argv[2]), sys.argv[3]
query = dns.message.make_query(name, "A")
times = []
for _ in range(count + 20):
    start = time.perf_counter()
    response = dns.query.udp(query, server, timeout=2)
    times.append(time.perf_counter() - start)
    assert response.answer, response
print(json.dumps(times[20:]))
"""

# Asks until the name resolves; prints the wall-clock time of the first answer.
UNTIL = r"""
import sys, time
import dns.message, dns.query, dns.rcode
query = dns.message.make_query(sys.argv[1], "A")
print("polling", flush=True)
deadline = time.time() + 30
while time.time() < deadline:
    try:
        if dns.query.udp(query, "127.0.0.11", timeout=1).answer:
            print(time.time(), flush=True)
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.002)
sys.exit(1)
"""


def in_container(h: LabHost, container: str, script: str, *args: str) -> list[str]:
    """The command that runs a Python script inside a container's network namespace."""
    sandbox = h.docker("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", container).stdout.strip()
    python = str(REPO / ".venv" / "bin" / "python")
    return [*h.nsenter(), "nsenter", f"--net={sandbox}", "--", python, "-c", script, *args]


def latencies(h: LabHost, container: str, name: str, count: int, server: str = "127.0.0.11") -> list[float]:
    command = in_container(h, container, LATENCY, name, str(count), server)
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"lookup of {name} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def appearance(lab: Lab, trials: int) -> list[float]:
    """Seconds from `docker run -d` returning on B until A's container resolves the new name."""
    h1, h2 = lab.hosts
    found = []
    for i in range(trials):
        name = f"new{i}"
        poller = subprocess.Popen(in_container(h1, "asker", UNTIL, name), stdout=subprocess.PIPE, text=True)
        assert poller.stdout is not None and poller.stdout.readline().strip() == "polling"
        h2.docker("run", "-d", "--name", name, "--network", "bench", lab.image, *SLEEP)
        returned = time.time()
        first = poller.stdout.readline().strip()
        if poller.wait(60) != 0 or not first:
            raise RuntimeError(f"{name} never resolved on {h1.name}")
        found.append(float(first) - returned)
        h2.docker("rm", "-f", name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=2000, help="lookups per name")
    parser.add_argument("--trials", type=int, default=20, help="containers started for the appearance time")
    parser.add_argument("--engine", default=None, help="Docker engine of the lab (default: the system's)")
    args = parser.parse_args()
    extra = {"engine": args.engine} if args.engine else {}
    with Lab(2, "bnames", etcd=True, daemon_json=lab_daemon_json(), **extra) as lab:
        h1, h2 = lab.hosts
        upstream = start_upstream(lab, {})  # names not found answer at once, as a real resolver does
        lab.start_agents(extra_env={"LOG_LEVEL": "info"})
        h1.create_network("bench", "--subnet", "10.70.0.0/24")
        deadline = time.monotonic() + 20
        while "bench" not in h2.docker("network", "ls").stdout.split():
            if time.monotonic() > deadline:
                sys.exit("network bench did not reach host 2")
            time.sleep(0.2)
        h1.docker("run", "-d", "--name", "asker", "--network", "bench", lab.image, *SLEEP)
        h1.docker("run", "-d", "--name", "samehost", "--network", "bench", lab.image, *SLEEP)
        h2.docker("run", "-d", "--name", "otherhost", "--network", "bench", lab.image, *SLEEP)
        ip_of(h2, "otherhost", "bench")
        version = h1.docker("version", "-f", "{{.Server.Version}}").stdout.strip()
        print(f"Docker {version}, {args.queries} lookups per name, {args.trials} containers started")
        same = latencies(h1, "asker", "samehost", args.queries)
        cross = latencies(h1, "asker", "otherhost", args.queries)
        direct = latencies(h1, "asker", "otherhost", args.queries, lab_daemon_json()["dns"][0])
        for label, values in (
            ("same host (Docker's DNS)", same),
            ("other host (pyoverlay)", cross),
            ("other host, name service asked directly", direct),
        ):
            p50, p99 = pct(values, 0.5) * 1e3, pct(values, 0.99) * 1e3
            print(f"lookup {label:<40} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms")
        print(
            f"ratio other/same host: p50 {pct(cross, 0.5) / pct(same, 0.5):.2f}  "
            f"p99 {pct(cross, 0.99) / pct(same, 0.99):.2f}  (target ≤ 1.2; p99 target ≤ 5 ms)"
        )
        seen = appearance(lab, args.trials)
        upstream.kill()
        print(
            f"docker run -d on B -> name resolves on A: p50 {pct(seen, 0.5) * 1e3:.0f} ms  "
            f"p99 {pct(seen, 0.99) * 1e3:.0f} ms  max {max(seen) * 1e3:.0f} ms  (target p99 ≤ 500 ms)"
        )


if __name__ == "__main__":
    main()
