"""Asking the local agent over its unix socket (the CLI's private calls, /pyoverlay.*)."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

# the agent's own calls on its socket (not Docker plugin calls; Docker never sends them)
STATUS_PATH = "/pyoverlay.Status"  # read-only: this host as its agent sees it (plugin/status.py)
ROTATE_KEY_PATH = "/pyoverlay.RotateKey"  # `pyoverlay rotate-key`


class AgentUnreachable(Exception):
    """No agent answers on the socket (not running, another socket path, no permission)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def call(socket_path: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> dict:
    """POST body to the agent; its JSON answer. RuntimeError with the agent's message on a refusal."""
    connection = _UnixConnection(socket_path, timeout)
    try:
        connection.request("POST", path, json.dumps(body or {}))
        response = connection.getresponse()
        answer = json.loads(response.read() or b"{}")
    except (OSError, http.client.HTTPException) as exc:
        raise AgentUnreachable(f"no agent answers on {socket_path}: {exc}") from exc
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(answer.get("Err") or f"HTTP {response.status}")
    return answer
