"""The plugin's own share of each request type, read from an agent's private timings route."""

from __future__ import annotations

from typing import Any

from tests.plugin_client import PluginClient

HOT_PATH = (
    "IpamDriver.RequestAddress",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.Join",
    "NetworkDriver.Leave",
    "NetworkDriver.DeleteEndpoint",
    "IpamDriver.ReleaseAddress",
)


def read_timings(socket_path: str, reset: bool = False) -> dict[str, dict[str, Any]]:
    """{request type: {count, p50_ms, p99_ms, max_ms}}; reset clears the agent's figures after reading."""
    answer = PluginClient(socket_path).ok("pyoverlay.Timings", {"Reset": reset})
    return {path.lstrip("/"): figures for path, figures in answer["Timings"].items()}
