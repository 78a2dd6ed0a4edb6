"""Throwaway X.509 certificates for tests, made with the ``openssl`` CLI (the same commands
docs/install.md gives operators): a CA, and certificates it signs for servers and clients.

    ca = CertificateAuthority(tmp_path / "ca", "test-ca")
    server = ca.issue("etcd", ips=["127.0.0.1"])
    agent = ca.issue("pyoverlay-agent")  # etcd with --client-cert-auth takes the CN as the user name
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "openssl"
DAYS = "2"  # a test's certificates need not outlive it
# P-256 keys: generated in milliseconds (RSA-2048 takes a noticeable fraction of a second each).
KEY_OPTIONS = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class KeyPair:
    cert: str  # PEM certificate file
    key: str  # PEM private key file


def _openssl(*args: str) -> None:
    done = subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")


class CertificateAuthority:
    """A self-signed CA in ``directory``; ``issue`` signs a certificate for a name."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert = str(directory / "ca.pem")
        self._key = str(directory / "ca-key.pem")
        self.name = name
        _openssl(
            "req", "-x509", *KEY_OPTIONS, "-keyout", self._key, "-out", self.cert, "-subj", f"/CN={name}",
            "-days", DAYS,
        )  # fmt: skip

    def issue(self, common_name: str, ips: Sequence[str] = (), dns: Sequence[str] = ()) -> KeyPair:
        """A certificate for ``common_name`` (server and client use), valid for ``ips``/``dns`` names."""
        stem = self.directory / common_name
        csr, ext = f"{stem}.csr", f"{stem}.ext"
        pair = KeyPair(cert=f"{stem}.pem", key=f"{stem}-key.pem")
        _openssl("req", "-new", *KEY_OPTIONS, "-keyout", pair.key, "-out", csr, "-subj", f"/CN={common_name}")
        names = [f"IP:{ip}" for ip in ips] + [f"DNS:{name}" for name in dns]
        lines = ["basicConstraints=CA:FALSE", "extendedKeyUsage=serverAuth,clientAuth"]
        if names:
            lines.append("subjectAltName=" + ",".join(names))
        Path(ext).write_text("\n".join(lines) + "\n")
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self._key, "-CAcreateserial",
            "-days", DAYS, "-extfile", ext, "-out", pair.cert,
        )  # fmt: skip
        return pair
