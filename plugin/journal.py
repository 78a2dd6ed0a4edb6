"""The bodies of requests in flight, kept so that a request Docker resends after an agent crash can be
answered. Docker's plugin client (moby pkg/plugins/client.go, callWithRetry) retries a request that met a
transport error, such as the agent dying in the middle of it, for ~30 s, but rebuilds each attempt from the
bytes.Buffer its first attempt drained: the retry arrives with an empty body. Each request's body is kept
in ``<state_dir>/inflight`` until it is answered; what a killed agent left there are the bodies Docker will
resend empty, and an empty request on that path gets the left body, when only one was left for it (with
several, nothing tells which one the retry is: it is refused, clearly)."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConflictError

log = logging.getLogger(__name__)

# Docker stops retrying 30 s after the first attempt: an older leftover will never be asked for again.
MAX_AGE = 60.0


@dataclass(frozen=True)
class Entry:
    key: str  # unique per request, and the same for its replay: an idempotency key (RequestAddress uses it)
    body: bytes
    file: Path | None  # None: nothing kept (an empty body that replays nothing)


class AmbiguousReplay(ConflictError):
    """Several requests on one path were in flight when the agent died and Docker resent one empty."""


class RequestJournal:
    def __init__(self, directory: str | Path, max_age: float = MAX_AGE) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_age = max_age
        self._lock = threading.Lock()
        self._leftovers: dict[str, list[tuple[float, Entry]]] = {}  # path -> entries a dead agent left
        self._load()

    def _load(self) -> None:
        now = time.time()
        for file in sorted(self.directory.iterdir()):
            # <ns since epoch>-<key>-<path>, e.g. 1764500000000000000-0f3a…-NetworkDriver.Join
            stamp, _, rest = file.name.partition("-")
            key, _, path = rest.partition("-")
            try:
                age = now - file.stat().st_mtime
                body = file.read_bytes()
            except OSError:
                continue
            if not stamp.isdigit() or not key or not path or not body.strip() or age > self.max_age:
                file.unlink(missing_ok=True)  # cut short by the kill, or Docker has given up on it
                continue
            entry = Entry(key, body, file)
            self._leftovers.setdefault("/" + path, []).append((time.monotonic() - age, entry))
        if self._leftovers:
            counts = {path: len(entries) for path, entries in self._leftovers.items()}
            log.warning(
                "requests in flight when the agent stopped, to answer if Docker resends them: %s", counts
            )

    def begin(self, path: str, body: bytes) -> Entry:
        """Keep a request's body until end(); an empty body on a path a dead agent left one body for gets
        that body (AmbiguousReplay when it left several)."""
        if body.strip():
            key = secrets.token_hex(8)
            file = self.directory / f"{time.time_ns()}-{key}-{path.lstrip('/')}"
            try:
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, body)
                finally:
                    os.close(fd)
            # a full or read-only disk must not refuse requests: only the replay is lost
            except OSError as exc:
                log.warning("%s: cannot keep the request body: %s", path, exc)
                return Entry(key, body, None)
            return Entry(key, body, file)
        with self._lock:
            left = self._leftovers.get(path, [])
            for at, old in [(at, e) for at, e in left if time.monotonic() - at > self.max_age]:
                left.remove((at, old))
                self.end(old)
            if not left:
                return Entry(secrets.token_hex(8), body, None)
            if len(left) > 1:
                raise AmbiguousReplay(
                    f"the agent restarted while {len(left)} {path.lstrip('/')} requests were in flight, and "
                    "Docker resent one without its body: cannot tell which; run the command again"
                )
            _, entry = left.pop()
        log.warning("%s came without a body after a restart: answering the request left in flight", path)
        return entry

    def end(self, entry: Entry) -> None:
        """The request is answered (or refused): forget its body."""
        if entry.file is not None:
            entry.file.unlink(missing_ok=True)
