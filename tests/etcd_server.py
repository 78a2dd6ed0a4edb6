"""A throwaway single-member etcd for tests: ``/usr/bin/etcd`` on free ports, a temp data dir.

    with EtcdServer() as etcd:
        store = EtcdStore([etcd.endpoint])
        etcd.kill(); etcd.start()  # a crash and a restart on the same data

With ``tls=EtcdTls(...)`` clients speak https and must show a certificate the CA signed
(``--client-cert-auth``); ``enable_auth`` and ``grant_prefix`` then give a certificate's CN a role.
``secured_etcd`` sets one up as docs/install.md does.

Independent of pytest so that any test tier (or a lab script) can import it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.tls_certs import CertificateAuthority, KeyPair

ETCD_BINARY = "/usr/bin/etcd"
ETCDCTL_BINARY = "/usr/bin/etcdctl"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def etcd_available() -> bool:
    return os.access(ETCD_BINARY, os.X_OK)


@dataclass(frozen=True)
class EtcdTls:
    """PEM files: the CA clients and server trust, the server's certificate and key, and the client
    certificate and key etcdctl and the health check use (CN ``root`` once auth is on)."""

    ca: str
    server_cert: str
    server_key: str
    admin_cert: str
    admin_key: str


class EtcdServer:
    """One etcd process. Ports and data dir are chosen once and kept across ``stop``/``start``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        data_dir: str | None = None,
        binary: str = ETCD_BINARY,
        tls: EtcdTls | None = None,
    ):
        self.host = host
        self.binary = binary
        self.tls = tls
        # tmpfs makes fsync free: the suites allocate thousands of keys.
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._owns_dir = data_dir is None
        self.workdir = Path(data_dir or tempfile.mkdtemp(prefix="pyoverlay-etcd-", dir=base))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "etcd.log"
        self.client_port = free_port(host)
        self.peer_port = free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """Client URL, e.g. http://127.0.0.1:40123 (https with TLS)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._url_host}:{self.client_port}"

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
        if self.tls:
            args += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                "--client-cert-auth",
                f"--trusted-ca-file={self.tls.ca}",
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
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=self.tls.ca)
            context.load_cert_chain(self.tls.admin_cert, self.tls.admin_key)
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1, context=context) as answer:
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
        tls = []
        if self.tls:  # with --client-cert-auth and auth on, the certificate's CN is the user
            tls = [f"--cacert={self.tls.ca}", f"--cert={self.tls.admin_cert}", f"--key={self.tls.admin_key}"]
        done = subprocess.run(
            [ETCDCTL_BINARY, f"--endpoints={self.endpoint}", *tls, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def enable_auth(self) -> None:
        """Turn etcd's authentication on, with a ``root`` user that has no password: only the admin
        certificate (CN root) is root. Needs ``tls``."""
        assert self.tls, "auth without passwords needs client certificates"
        self.etcdctl("user", "add", "root", "--no-password")
        self.etcdctl("auth", "enable")

    def grant_prefix(self, user: str, prefix: str, role: str | None = None) -> None:
        """Make ``user`` (a certificate's CN) able to read and write the keys under ``prefix`` only."""
        role = role or f"{user}-role"
        self.etcdctl("role", "add", role)
        self.etcdctl("role", "grant-permission", role, "--prefix=true", "readwrite", prefix)
        self.etcdctl("user", "add", user, "--no-password")
        self.etcdctl("user", "grant-role", user, role)

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


AGENT_USER = "pyoverlay-agent"  # the agents' client certificate's CN: their etcd user
AGENT_PREFIX = "/pyoverlay/"  # the only keys that user may read or write


@dataclass
class SecuredEtcd:
    """An etcd as docs/install.md sets one up: TLS with client certificates, auth on, and the agents'
    user limited to pyoverlay's prefix. ``stranger`` is a certificate with the agents' CN that another
    CA signed."""

    server: EtcdServer
    ca: CertificateAuthority
    agent: KeyPair
    stranger: KeyPair

    def store_tls(self, pair: KeyPair | None = None) -> dict[str, str]:
        """open_store's TLS arguments for ``pair`` (default: the agents' certificate)."""
        pair = pair or self.agent
        return {"ca_cert": self.ca.cert, "cert_cert": pair.cert, "cert_key": pair.key}

    def agent_env(self) -> dict[str, str]:
        """The agent's (and the operator commands') settings for the agents' identity."""
        return {
            "ETCD_ENDPOINTS": self.server.endpoint,
            "ETCD_CA_CERT": self.ca.cert,
            "ETCD_CERT": self.agent.cert,
            "ETCD_KEY": self.agent.key,
        }

    def close(self) -> None:
        self.server.close()


def secured_etcd(directory: Path, host: str = "127.0.0.1") -> SecuredEtcd:
    """Certificates in ``directory``, then a started etcd with client-certificate auth and a least-
    privilege user for the agents."""
    ca = CertificateAuthority(directory / "ca", "pyoverlay-test-ca")
    server_pair = ca.issue("etcd-server", ips=sorted({host, "127.0.0.1"}))
    admin = ca.issue("root")  # with --client-cert-auth, etcd takes the CN as the user: root
    agent = ca.issue(AGENT_USER)
    stranger = CertificateAuthority(directory / "other-ca", "another-ca").issue(AGENT_USER)
    tls = EtcdTls(ca.cert, server_pair.cert, server_pair.key, admin.cert, admin.key)
    server = EtcdServer(host=host, data_dir=str(directory / "etcd"), tls=tls)
    server.start()
    try:
        server.enable_auth()
        server.grant_prefix(AGENT_USER, AGENT_PREFIX)
    except BaseException:
        server.close()
        raise
    return SecuredEtcd(server, ca, agent, stranger)
