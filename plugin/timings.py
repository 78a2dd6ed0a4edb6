"""The plugin's own share of each request: handler durations per request type, kept in memory.

Docker's side of a call (its own work, the HTTP round trip on the socket) is not in here: the figures
start when Flask hands the request to the route and end when the answer is built. Read them through the
private ``/pyoverlay.Timings`` route (see docs/benchmarks.md); Docker never calls it.
"""

from __future__ import annotations

import threading
from collections import deque

SAMPLES = 1024  # per request type: a p99 of the recent calls, bounded so a long-lived agent keeps its size


class RequestTimings:
    """Recent handler durations per path; safe to use from the server's threads."""

    def __init__(self, samples: int = SAMPLES) -> None:
        self._samples = samples
        self._lock = threading.Lock()
        self._by_path: dict[str, deque[float]] = {}
        self._counts: dict[str, int] = {}

    def record(self, path: str, seconds: float) -> None:
        with self._lock:
            durations = self._by_path.get(path)
            if durations is None:
                durations = self._by_path[path] = deque(maxlen=self._samples)
            durations.append(seconds)
            self._counts[path] = self._counts.get(path, 0) + 1

    def reset(self) -> None:
        with self._lock:
            self._by_path.clear()
            self._counts.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per path: requests seen since the last reset, and p50/p99/max in ms of the kept samples."""
        with self._lock:
            kept = {path: sorted(durations) for path, durations in self._by_path.items()}
            counts = dict(self._counts)
        return {
            path: {
                "count": counts[path],
                "p50_ms": round(_quantile(values, 0.50) * 1000, 3),
                "p99_ms": round(_quantile(values, 0.99) * 1000, 3),
                "max_ms": round(values[-1] * 1000, 3),
            }
            for path, values in sorted(kept.items())
        }


def _quantile(ordered: list[float], q: float) -> float:
    # nearest rank: with few samples the p99 is the slowest one, which is what a reader expects
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]
