"""Small helpers the lab benchmarks share: percentiles, containers' addresses and network namespaces."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tests.lab import LabHost


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ip_of(h: LabHost, container: str, network: str) -> str:
    out = h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
    return json.loads(out)[network]["IPAddress"]


def wait_network(h: LabHost, name: str, timeout: float = 15) -> None:
    """Wait until a network created on another host (through the store) is listed on ``h``."""
    deadline = time.monotonic() + timeout
    while name not in h.docker("network", "ls", "--format", "{{.Name}}").stdout.split():
        if time.monotonic() > deadline:
            raise RuntimeError(f"network {name} did not reach {h.name}")
        time.sleep(0.2)


@dataclass(frozen=True)
class ContainerNetns:
    """A running container's network namespace, entered with the host's own binaries (not the image's,
    and outside the container's cgroup), so every path under test runs the same processes."""

    host: LabHost
    name: str
    pid: int

    @classmethod
    def of(cls, h: LabHost, container: str) -> ContainerNetns:
        return cls(h, container, int(h.docker("inspect", "-f", "{{.State.Pid}}", container).stdout))

    def run(
        self, cmd: Sequence[str], *, check: bool = True, timeout: float | None = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.host.run(["nsenter", "-t", str(self.pid), "-n", *cmd], check=check, timeout=timeout)

    def mtu_towards(self, address: str) -> int:
        """The MTU of the interface this namespace routes ``address`` through (not /sys: the host's
        mount namespace shows the host's interfaces there)."""
        route = json.loads(self.run(["ip", "-j", "route", "get", address]).stdout)[0]
        return json.loads(self.run(["ip", "-j", "link", "show", "dev", route["dev"]]).stdout)[0]["mtu"]

    def wait_reachable(self, address: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.run(["busybox", "ping", "-c", "1", "-W", "1", address], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} on {self.host.name} cannot reach {address}")
