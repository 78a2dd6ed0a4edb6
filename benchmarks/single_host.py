"""Single-host figures on a one-host lab with the embedded store:

    sudo .venv/bin/python -m benchmarks.single_host [--runs 20] [--requests 1000] [--baseline DIR]

- `docker run --rm --network <net> busybox true`: median over N runs on a pyoverlay network vs on a
  user-defined bridge network, interleaved in one session, and the ratio; the plugin's own share of each
  request type during those runs (p50/p99, from the agent's private timings route); with --baseline, the
  same for a checkout of another version, its agent and this tree's taking turns (benchmarks.docker_run);
- the agent's resident memory before and after 1,000 plugin requests (a realistic mix: address requests and
  releases, endpoint create/join/delete, capabilities), and whether it grew.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path

from benchmarks import docker_run
from tests.lab import Lab, LabHost
from tests.plugin_client import PluginClient

AGENT_ENV = {"LOG_LEVEL": "info"}


def rss_kib(h: LabHost) -> dict[str, int]:
    """Resident memory of each process of the agent (gunicorn master and worker), by pid."""
    assert h.agent is not None
    found, todo = {}, [h.agent.pid]
    while todo:
        pid = todo.pop()
        children = Path(f"/proc/{pid}/task/{pid}/children")
        todo += [int(c) for c in children.read_text().split()] if children.exists() else []
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"pyoverlay" in cmdline and not cmdline.startswith(b"nsenter"):
            status = Path(f"/proc/{pid}/status").read_text()
            found[pid] = int(
                next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
            )
    return found


def request_mix(client: PluginClient, network_id: str, pool_id: str, total: int) -> None:
    sent = 0
    while sent < total:
        mac = ":".join(f"{b:02x}" for b in (2, *uuid.uuid4().bytes[:5]))
        address = client.ok(
            "IpamDriver.RequestAddress",
            {"PoolID": pool_id, "Options": {"com.docker.network.endpoint.macaddress": mac}},
        )["Address"]
        ids = {"NetworkID": network_id, "EndpointID": uuid.uuid4().hex * 2}
        client.ok(
            "NetworkDriver.CreateEndpoint", {**ids, "Interface": {"Address": address, "MacAddress": mac}}
        )
        client.ok("NetworkDriver.Join", {**ids, "SandboxKey": "/x"})
        client.ok("NetworkDriver.EndpointOperInfo", ids)
        client.ok("NetworkDriver.Leave", ids)
        client.ok("NetworkDriver.DeleteEndpoint", ids)
        client.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address.split("/")[0]})
        client.ok("NetworkDriver.GetCapabilities")
        client.ok("IpamDriver.GetCapabilities")
        client.ok("Plugin.Activate")
        sent += 10


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--baseline",
        help="a checkout (with its .venv) whose agent takes turns with this tree's: before/after",
    )
    args = parser.parse_args()
    with Lab(1, name="pyosingle", etcd=False) as lab:
        h = lab.hosts[0]
        h.start_agent(extra_env=AGENT_ENV)
        h.create_network("pyo", "--subnet", "10.62.0.0/24")
        h.docker("network", "create", "--subnet", "10.63.0.0/24", "bridged")
        baseline = Path(args.baseline).resolve() if args.baseline else None
        docker_run.report(docker_run.compare(lab, h, ("pyo", "bridged"), args.runs, baseline, AGENT_ENV))

        network_id = h.docker("network", "inspect", "-f", "{{.Id}}", "pyo").stdout.strip()
        client = PluginClient(str(h.agent_socket))
        before = rss_kib(h)
        start = time.monotonic()
        request_mix(client, network_id, "10.62.0.0/24", args.requests)
        elapsed = time.monotonic() - start
        after = rss_kib(h)
        request_mix(client, network_id, "10.62.0.0/24", args.requests)
        again = rss_kib(h)
        print(f"{args.requests} requests in {elapsed:.1f} s ({args.requests / elapsed:.0f}/s)")
        for pid in sorted(after):
            mib = [before.get(pid, 0) / 1024, after[pid] / 1024, again.get(pid, 0) / 1024]
            print(
                f"  agent pid {pid}: RSS {mib[0]:.1f} MiB before, {mib[1]:.1f} MiB after {args.requests}, "
                f"{mib[2]:.1f} MiB after {2 * args.requests}"
            )


if __name__ == "__main__":
    main()
