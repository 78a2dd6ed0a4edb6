"""A tiny HTTP client for a plugin's unix socket, speaking as dockerd does (POST, no Content-Type)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def unix_http(
    path: str, method: str, url: str, body: bytes | None = None, timeout: float = 5
) -> tuple[int, bytes]:
    """One HTTP request over a unix socket; returns (status, body). Raises OSError if nobody listens."""
    conn = _UnixConnection(path, timeout)
    try:
        # No Content-Type, as dockerd sends plugin requests.
        conn.request(method, url, body=body, headers={"Accept": "application/vnd.docker.plugins.v1+json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class PluginClient:
    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def raw(self, method: str, body: bytes) -> tuple[int, Any]:
        status, data = unix_http(self.socket_path, "POST", "/" + method, body, self.timeout)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode(errors="replace")

    def call(self, method: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        return self.raw(method, json.dumps(body or {}).encode())

    def ok(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        status, answer = self.call(method, body)
        assert status == 200, f"{method}: {status} {answer}"
        assert "Err" not in answer and "Error" not in answer, f"{method}: {answer}"
        return answer

    def wait_ready(self, deadline: float = 15.0) -> float:
        """Seconds until /Plugin.Activate answered."""
        start = time.monotonic()
        while True:
            try:
                status, _ = self.call("Plugin.Activate")
                if status == 200:
                    return time.monotonic() - start
            except OSError:
                pass
            if time.monotonic() - start > deadline:
                raise TimeoutError(f"{self.socket_path} did not answer within {deadline}s")
            time.sleep(0.05)
