"""Which Docker engine a lab host runs: the system's (Debian's docker.io 20.10) or one unpacked by
scripts/fetch-engine.sh (e.g. 28) under /var/cache/pyoverlay/engines/<version>/."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SYSTEM_DOCKER = "/usr/bin/docker"  # the 20.10 client matching the daemon (a newer one may come first in PATH)
SYSTEM_DOCKERD = "/usr/sbin/dockerd"
ENGINES_ROOT = Path(os.environ.get("PYOVERLAY_ENGINES", "/var/cache/pyoverlay/engines"))


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


def engine(version: str | None) -> Engine:
    """The engine of a version ("28", "26"); None is the system's."""
    if version is None:
        return Engine(None, SYSTEM_DOCKERD, SYSTEM_DOCKER, None)
    bin_dir = ENGINES_ROOT / version / "bin"
    client = bin_dir / "docker"  # Debian's docker-cli of the same release, fetched beside the daemon
    return Engine(version, str(bin_dir / "dockerd"), str(client), bin_dir)
