"""The lab's stand-in for "the host's normal resolvers" (there is no internet): tests.dns_upstream run in
the underlay namespace, and every host's /etc/resolv.conf naming it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

from .lab import REPO, Lab


def start_upstream(lab: Lab, records: Mapping[str, str]) -> subprocess.Popen[str]:
    """A DNS server on the underlay address, port 53, answering ``records``; every host resolves through
    it from now on. The caller kills it."""
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
