"""Deleting retired devices off the request path.

The kernel takes ~20 ms to delete a veth pair (unregister_netdevice waits for RCU grace periods), and
Docker waits for DeleteEndpoint inside `docker run --rm`. The Dataplane retires a pair at once (detached
from its bridge, down, renamed out of the endpoint's names) and hands the new name to a Reaper, whose
thread deletes it. Retired names are garbage by their prefix alone: whatever a crash leaves queued is
found again by Dataplane.delete_retired_veths.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)


class Reaper:
    """A thread that deletes the devices named to it, in order, one at a time."""

    def __init__(self, delete: Callable[[Hashable], object], name: str = "veth-reaper") -> None:
        self._delete = delete  # called from the reaper's own thread
        self._name = name
        self._queue: queue.SimpleQueue[Hashable | None] = queue.SimpleQueue()
        self._pending = 0
        self._settled = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, ifname: Hashable) -> None:
        """Delete ifname (whatever names a device to the delete function) soon; a failure is logged (the
        next delete_retired_veths tries again)."""
        with self._settled:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():  # first use, or after a fork
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put(ifname)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every device named so far is deleted (or failed to be); False on timeout."""
        with self._settled:
            return self._settled.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Delete what is queued, then stop the thread."""
        with self._settled:
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while (ifname := self._queue.get()) is not None:
            try:
                self._delete(ifname)
            except Exception as exc:  # one failure never stops the deletions queued after it
                log.warning("%s: delete retired device: %s", ifname, exc)
            finally:
                with self._settled:
                    self._pending -= 1
                    self._settled.notify_all()
