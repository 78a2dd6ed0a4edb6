"""The narrow transactional key-value primitive the cluster policy is written on: the etcd v3 model.

Keys and values are strings. Every write bumps one store-wide revision; each key keeps the revision it
was created at, the revision of its last change and a version (number of writes since created). A
transaction is a list of compares and, when all hold, a list of puts and deletes, applied atomically.
A watch delivers the changes under a prefix from a start revision, in order, until it is cancelled or
fails (``Compacted`` when that revision is gone, ``StoreUnavailable`` when the connection is lost).

Implementations: ``kv_etcd.EtcdKV`` (etcd v3) and ``kv_sqlite.SqliteKV`` (embedded, single host; in a
file or in memory). Both pass tests/contract/test_kv_contract.py unchanged.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class Compare:
    """``<target> of key <op> value``. target: "value" | "version" | "create" | "mod"; op: "==" "!="
    "<" ">". An absent key has version, create and mod revision 0, and no value (a value compare on it
    fails). With ``prefix``, it must hold for every key under ``key`` (etcd's range compare); a prefix
    with no key at all compares as one absent key."""

    key: str
    target: str
    op: str
    value: int | str
    prefix: bool = False


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    """Delete ``key``, or with ``prefix`` every key under it."""

    key: str
    prefix: bool = False


Op = Put | Delete


@dataclass(frozen=True)
class Change:
    """One key's change seen by a watch; ``value`` is None for a delete."""

    key: str
    value: str | None
    revision: int


# A watch hands its sink either a batch of changes (in revision order) or the error that ended it.
WatchSink = Callable[[list[Change] | Exception], None]


class Watch(abc.ABC):
    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop delivering; idempotent. After it returns the sink is not called again."""


# -- compare builders: the shapes the policy uses ---------------------------------------------------
def absent(key: str) -> Compare:
    return Compare(key, "version", "==", 0)


def present(key: str) -> Compare:
    return Compare(key, "version", ">", 0)


def unchanged(key: str, item: Item | None) -> Compare:
    """Holds if ``key`` is as it was read: still absent, or not modified since."""
    return absent(key) if item is None else Compare(key, "mod", "==", item.mod_revision)


def same_incarnation(key: str, item: Item) -> Compare:
    """Holds while the key read as ``item`` was not deleted and created again (it may have changed)."""
    return Compare(key, "create", "==", item.create_revision)


def prefix_unchanged(prefix: str, revision: int) -> Compare:
    """Holds if no key under ``prefix`` was created or modified after ``revision``. Deletions are not
    seen: a decision that needs a key to still exist also compares that key."""
    return Compare(prefix, "mod", "<", revision + 1, prefix=True)


def prefix_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix`` (keys are ASCII here)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class KeyValue(abc.ABC):
    """The primitive. Every method may raise StoreUnavailable; ``watch`` reports failures to its sink."""

    @abc.abstractmethod
    def get(self, *keys: str) -> list[Item | None]:
        """The keys' current items, read at one revision."""

    @abc.abstractmethod
    def range(self, prefix: str, keys_only: bool = False) -> tuple[list[Item], int]:
        """Every item under ``prefix`` in key order (values "" with ``keys_only``), and the revision
        the read was made at: a watch from that revision + 1 misses nothing and repeats nothing."""

    @abc.abstractmethod
    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> bool:
        """Apply ``ops`` atomically if every compare holds; False (nothing written) if one failed. A
        transaction that changes nothing (deletes of absent keys) does not bump the revision. etcd's
        limits hold for portable callers: at most 128 ops, and no key named twice (a put under a
        prefix deleted in the same transaction counts)."""

    @abc.abstractmethod
    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; keys put with it vanish (delete events) when it expires."""

    @abc.abstractmethod
    def keepalive(self, lease: int) -> bool:
        """Refresh the lease; False if it has expired already (its keys are gone)."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int, sink: WatchSink) -> Watch:
        """Deliver every change under ``prefix`` with revision >= ``start_revision`` to ``sink``, from a
        thread of the store's, until cancelled. Raises Compacted / StoreUnavailable if the watch cannot
        start; a later compaction or lost connection is delivered once to the sink, and the watch ends.
        The sink must return quickly (it runs on the thread that feeds every watch) and may cancel."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""
