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


def print_timings(timings: dict[str, dict[str, Any]], title: str) -> None:
    print(title)
    shown = [p for p in HOT_PATH if p in timings] + sorted(p for p in timings if p not in HOT_PATH)
    total = 0.0
    for path in shown:
        f = timings[path]
        if path in HOT_PATH:
            total += f["p50_ms"]
        print(f"  {path:<38} n={f['count']:<5} p50 {f['p50_ms']:7.2f} ms  p99 {f['p99_ms']:7.2f} ms")
    print(f"  sum of p50 over one container's life (RequestAddress … ReleaseAddress): {total:.1f} ms")
