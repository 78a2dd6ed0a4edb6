"""A throwaway single-member etcd for tests: ``/usr/bin/etcd`` on free ports, a temp data dir.

    with EtcdServer() as etcd:
        store = EtcdStore([etcd.endpoint])
        etcd.kill(); etcd.start()  # a crash and a restart on the same data

Independent of pytest so that any test tier (or a lab script) can import it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ETCD_BINARY = "/usr/bin/etcd"
ETCDCTL_BINARY = "/usr/bin/etcdctl"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def etcd_available() -> bool:
    return os.access(ETCD_BINARY, os.X_OK)


class EtcdServer:
    """One etcd process. Ports and data dir are chosen once and kept across ``stop``/``start``."""

    def __init__(self, host: str = "127.0.0.1", data_dir: str | None = None, binary: str = ETCD_BINARY):
        self.host = host
        self.binary = binary
        # tmpfs makes fsync free: the suites allocate thousands of keys.
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._owns_dir = data_dir is None
        self.workdir = Path(data_dir or tempfile.mkdtemp(prefix="pyoverlay-etcd-", dir=base))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "etcd.log"
        self.client_port = free_port(host)
        self.peer_port = free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """Client URL, e.g. http://127.0.0.1:40123."""
        return f"http://{self._url_host}:{self.client_port}"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def start(self, timeout: float = 20.0) -> EtcdServer:
        """Start (or restart on the same data) and wait until /health answers true."""
        if self.process is not None and self.process.poll() is None:
            return self
        peer = f"http://{self._url_host}:{self.peer_port}"
        args = [
            self.binary,
            "--name=test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        self.process = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"etcd did not become healthy within {timeout}s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as answer:
                return b'"true"' in answer.read()
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM and wait: a clean shutdown."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL and wait: a crash."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def etcdctl(self, *args: str) -> str:
        """Run etcdctl against this server and return its stdout."""
        env = {**os.environ, "ETCDCTL_API": "3"}
        done = subprocess.run(
            [ETCDCTL_BINARY, f"--endpoints={self.endpoint}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Kill the process and remove the data dir (if we created it)."""
        self.kill()
        if self._owns_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
