"""The simulated cluster of benchmarks.scale: deterministic ids for hosts, networks and endpoints, writing
them through the store API of whichever tree is on the path, and counting what etcd then holds.

Imports only the stdlib at module level: the parent (benchmarks.scale) and every version's child
(benchmarks/scale_host.py, run by file path) import it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

ROOT_PREFIX = "/pyoverlay/v1/"
ETCDCTL = "/usr/bin/etcdctl"


def hex_id(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


@dataclass(frozen=True)
class Cluster:
    """Deterministic ids for the simulated cluster, so that every child names the same hosts,
    networks and endpoints. Host i joins networks joined*i .. joined*i+joined-1 (mod networks);
    endpoint e lives in network e % networks, on one of that network's hosts in turn."""

    hosts: int
    networks: int
    endpoints: int
    joined: int

    def host_id(self, i: int) -> str:
        return hex_id("host", i)[:16]  # agents use uuid4().hex[:16]

    def vtep(self, i: int) -> str:
        return f"192.168.{i // 250}.{i % 250 + 1}"

    def network_id(self, n: int) -> str:
        return hex_id("network", n)  # the creating host's Docker NetworkID

    def docker_network_id(self, i: int, n: int) -> str:
        return self.network_id(n) if i == self.hosts_of(n)[0] else hex_id("docker", i, n)

    def subnet(self, n: int) -> str:
        return f"10.{100 + n // 256}.{n % 256}.0/24"

    def joined_by(self, i: int) -> list[int]:
        return sorted({(self.joined * i + k) % self.networks for k in range(self.joined)})

    def hosts_of(self, n: int) -> list[int]:
        return self._members[n]

    @cached_property
    def _members(self) -> dict[int, list[int]]:
        members: dict[int, list[int]] = {n: [] for n in range(self.networks)}
        for i in range(self.hosts):
            for n in self.joined_by(i):
                members[n].append(i)
        return members

    def endpoint(self, e: int) -> tuple[str, int, int, str]:
        """(endpoint id, network, host, mac) of endpoint number e."""
        n = e % self.networks
        hosts = self.hosts_of(n)
        return hex_id("endpoint", e), n, hosts[(e // self.networks) % len(hosts)], mac_for(e)

    def check(self) -> None:
        empty = [n for n in range(self.networks) if not self.hosts_of(n)]
        if empty:
            sys.exit(f"{len(empty)} networks have no host: need hosts * joined >= networks")


def mac_for(e: int) -> str:
    return "02:42:" + ":".join(f"{b:02x}" for b in e.to_bytes(4, "big"))


def count_keys(etcd: str, prefix: str = ROOT_PREFIX) -> dict[str, int]:
    """Keys under ``prefix`` and their key and value bytes, as etcd holds them."""
    out = subprocess.run(
        [ETCDCTL, f"--endpoints={etcd}", "get", "--prefix", prefix, "-w", "json"],
        env={"ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    kvs = json.loads(out).get("kvs", [])
    return {
        "keys": len(kvs),
        "key_bytes": sum(len(base64.b64decode(kv["key"])) for kv in kvs),
        "value_bytes": sum(len(base64.b64decode(kv.get("value", ""))) for kv in kvs),
    }


# -- populating (the store API of whichever tree is on PYTHONPATH) ----------------------------------
def populate(cluster: Cluster, etcd: str, threads: int) -> dict[str, Any]:
    from kvstore import GATEWAY_OWNER, Endpoint, Network, open_store

    state_dir = tempfile.TemporaryDirectory(prefix="pyoverlay-scale-")  # unused with etcd
    store = open_store([etcd], state_dir.name)
    started = time.monotonic()

    def network(n: int) -> None:
        subnet = cluster.subnet(n)
        for i in cluster.hosts_of(n):
            pool = store.request_pool(cluster.host_id(i), subnet, None, "10.0.0.0/8", 24)
            gateway = store.reserve_address(pool.pool_id, GATEWAY_OWNER, cluster.host_id(i))
            wanted = Network(
                cluster.network_id(n), 0, subnet=subnet, pool_id=pool.pool_id, gateway=gateway, name=f"net{n}"
            )
            store.create_network(cluster.host_id(i), cluster.docker_network_id(i, n), wanted)

    def endpoints(n: int) -> None:
        pool_id = cluster.subnet(n)  # a pool's id is its subnet
        for e in range(n, cluster.endpoints, cluster.networks):  # in order: no racing on one pool
            endpoint_id, _, i, mac = cluster.endpoint(e)
            host_id, vtep = cluster.host_id(i), cluster.vtep(i)
            address = store.reserve_address(pool_id, mac, host_id) + "/24"
            record = Endpoint(endpoint_id, cluster.network_id(n), host_id, vtep, mac, address, f"web-{e}")
            store.put_endpoint(record)

    with ThreadPoolExecutor(threads) as workers:
        list(workers.map(network, range(cluster.networks)))
        networks_done = time.monotonic()
        list(workers.map(endpoints, range(cluster.networks)))
    store.close()
    state_dir.cleanup()
    return {
        "networks_seconds": networks_done - started,
        "endpoints_seconds": time.monotonic() - networks_done,
    }


def topology_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--networks", type=int, default=50)
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--joined", type=int, default=5, help="networks each host joins")
