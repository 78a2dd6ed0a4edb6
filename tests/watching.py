"""A watch sink for tests: keeps every batch a store or key-value watch delivers, and waits for them."""

from __future__ import annotations

import queue
import time
from typing import Any


class Collector:
    def __init__(self) -> None:
        self._batches: queue.Queue[Any] = queue.Queue()

    def __call__(self, batch: Any) -> None:
        self._batches.put(batch)

    def items(self, quiet: float = 0.3, limit: float = 10.0) -> list[Any]:
        """Every item delivered until nothing more arrives for ``quiet`` seconds (at most ``limit``).
        An error ending the watch is returned as the last item."""
        found: list[Any] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                batch = self._batches.get(timeout=quiet)
            except queue.Empty:
                break
            found += [batch] if isinstance(batch, Exception) else batch
        return found

    def first(self, timeout: float = 10.0) -> Any:
        """The first item delivered (an event or change, or the error that ended the watch)."""
        batch = self._batches.get(timeout=timeout)
        return batch if isinstance(batch, Exception) else batch[0]
