"""The name service's answer cache: our UDP answers as sent, by the asker's networks and the question's
bytes after its ID, valid while the names stay as they were. A repeated question is answered on the
receiving thread without parsing or rendering."""

from __future__ import annotations

from .index import NameIndex

MAX_QUESTION = 512  # bigger questions (padded EDNS) are answered, not cached: the cache stays small


class AnswerCache:
    def __init__(self, index: NameIndex, size: int = 10_000) -> None:
        self.index = index
        self.size = size
        # (networks, question after its ID) -> (the index generation it was made at, the answer)
        self._entries: dict[tuple[frozenset[str], bytes], tuple[int, bytes]] = {}

    def get(self, networks: frozenset[str] | None, wire: bytes) -> bytes | None:
        """The cached answer to this question with the question's own ID, or None."""
        if not networks or not 12 <= len(wire) <= MAX_QUESTION:
            return None
        entry = self._entries.get((networks, wire[2:]))
        if entry is None or entry[0] != self.index.generation:
            return None  # never an answer made before the names last changed
        return wire[:2] + entry[1][2:]

    def put(self, networks: frozenset[str] | None, wire: bytes, response: bytes, generation: int) -> None:
        """Keep an answer made from the index at ``generation`` (read before answering)."""
        if not networks or not 12 <= len(wire) <= MAX_QUESTION or generation != self.index.generation:
            return
        if len(self._entries) >= self.size:
            self._entries = {}  # whole: a full cache means questions nobody repeats
        self._entries[(networks, wire[2:])] = (generation, response)
