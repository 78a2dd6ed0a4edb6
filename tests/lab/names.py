"""Names in the lab: a stand-in for "the host's normal resolvers" (there is no internet), tests.dns_upstream
run in the underlay namespace with every host's /etc/resolv.conf naming it; and lookups in containers."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping

from plugin.cli import daemon_config
from plugin.settings import Settings

from .host import LabHost
from .lab import REPO, Lab

LAB_RESOLVER = "10.99.0.254"  # the default underlay's gateway address, where start_upstream listens


def lab_daemon_json() -> dict[str, object]:
    """What `pyoverlay daemon-config` prints on a lab host whose resolv.conf names the lab's upstream."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as resolv:
        resolv.write(f"nameserver {LAB_RESOLVER}\n")
        resolv.flush()
        return daemon_config(Settings(), resolv.name)


def start_upstream(lab: Lab, records: Mapping[str, str]) -> subprocess.Popen[str]:
    """A DNS server on the underlay address, port 53, answering ``records``; every host resolves through
    it from now on. The caller kills it."""
    assert lab.underlay_address == LAB_RESOLVER, "lab_daemon_json names another resolver"
    upstream = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{lab.underlay_netns}",
            "--",
            sys.executable,
            "-m",
            "tests.dns_upstream",
        ]
        + [lab.underlay_address, "53", *(f"{k}={v}" for k, v in records.items())],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert upstream.stdout is not None
    if upstream.stdout.readline().strip() != "ready":
        upstream.kill()
        raise RuntimeError("the lab's upstream DNS server did not start")
    for h in lab.hosts:  # the host's own mount namespace: dockerd and the agent see this file
        resolv = h.workdir / "resolv.conf"
        resolv.write_text(f"nameserver {lab.underlay_address}\n")
        h.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"])
    return upstream


def resolved(h: LabHost, container: str, name: str) -> list[str]:
    """The IPv4 addresses `nslookup NAME` gives inside the container (busybox, through 127.0.0.11)."""
    out = h.docker("exec", container, "nslookup", "-type=a", name, check=False, timeout=30).stdout
    answer = out.split("Non-authoritative answer:", 1)[-1] if "answer" in out else out.split("\n\n", 1)[-1]
    return sorted(set(re.findall(r"Address:\s*(\d+\.\d+\.\d+\.\d+)\s*$", answer, re.M)))
