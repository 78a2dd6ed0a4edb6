"""Which Docker engine a lab host runs: the system's (Debian's docker.io 20.10) or one unpacked by
scripts/fetch-engine.sh (e.g. 28) under /var/cache/pyoverlay/engines/<version>/.

``PYOVERLAY_ENGINE`` (26, 28; unset or "system": the system's) is the session's engine: every lab host
that does not name one runs it. scripts/test.sh sets it to run the dockerd tests once per engine."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SYSTEM_DOCKER = "/usr/bin/docker"  # the 20.10 client matching the daemon (a newer one may come first in PATH)
SYSTEM_DOCKERD = "/usr/sbin/dockerd"
ENGINES_ROOT = Path(os.environ.get("PYOVERLAY_ENGINES", "/var/cache/pyoverlay/engines"))
SYSTEM = "system"  # names the system's engine explicitly, whatever the session's engine is


@dataclass(frozen=True)
class Engine:
    """The binaries of one engine. ``bin_dir`` (containerd, docker-init, docker-proxy) goes first on
    dockerd's PATH; runc is always the system's, found further down PATH."""

    version: str | None  # None: the system's
    dockerd: str
    docker: str  # the client matching the daemon
    bin_dir: Path | None

    @property
    def label(self) -> str:
        """The version ("28"), or "system" for the default engine."""
        return self.version or "system"

    def missing(self) -> str | None:
        """Why this engine cannot run here, or None if it can."""
        if os.access(self.dockerd, os.X_OK) and os.access(self.docker, os.X_OK):
            return None
        if self.version is None:
            return f"{SYSTEM_DOCKERD} or {SYSTEM_DOCKER} missing (apt-get install docker.io)"
        return f"Docker engine {self.version} is not fetched: run scripts/fetch-engine.sh {self.version}"

    @property
    def release(self) -> tuple[int, int]:
        """The daemon's (major, minor), from ``dockerd --version``: (20, 10) for bookworm's docker.io."""
        return _release(self.dockerd)

    # What differs between the engines, in one place (docs/docker-versions.md): tests ask these,
    # never compare versions themselves.
    @property
    def ipv6_only_networks(self) -> bool:
        """``--ipv4=false`` exists (28); older daemons give every network IPv4 and pass the option on,
        which pyoverlay refuses."""
        return self.release >= (28, 0)

    @property
    def forward_chain(self) -> str:
        """The filter chain holding Docker's bridge FORWARD rules: its own DOCKER-FORWARD since 28."""
        return "DOCKER-FORWARD" if self.release >= (28, 0) else "FORWARD"


@cache
def _release(dockerd: str) -> tuple[int, int]:
    out = subprocess.run([dockerd, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"version (\d+)\.(\d+)", out)
    if not match:
        raise RuntimeError(f"{dockerd} --version: no version in {out!r}")
    return int(match[1]), int(match[2])


def session_version() -> str | None:
    """The session's engine (``PYOVERLAY_ENGINE``): a version, or None for the system's."""
    version = os.environ.get("PYOVERLAY_ENGINE", "").strip()
    return None if version in ("", SYSTEM) else version


def engine(version: str | None) -> Engine:
    """The engine of a version ("28", "26"); "system" is the system's; None is the session's."""
    if version is None:
        version = session_version()
    if version is None or version == SYSTEM:
        return Engine(None, SYSTEM_DOCKERD, SYSTEM_DOCKER, None)
    bin_dir = ENGINES_ROOT / version / "bin"
    client = bin_dir / "docker"  # Debian's docker-cli of the same release, fetched beside the daemon
    return Engine(version, str(bin_dir / "dockerd"), str(client), bin_dir)
