"""Store.revision(): the revision every write advances and every listing is read at (the metrics' event-loop
lag is this minus the loop's applied revision), on every key-value primitive."""

from __future__ import annotations

from kvstore import Host, Store

from .records import pool


def test_revision_advances_with_any_write_and_matches_listings(store: Store) -> None:
    before = store.revision()
    assert store.revision() == before  # a read writes nothing
    pool(store, "10.1.0.0/24")
    after_pool = store.revision()
    assert after_pool > before
    store.register_host(Host("h1", "192.0.2.1"), ttl=30)
    hosts, listed_at = store.hosts_at()
    assert store.revision() == listed_at > after_pool and [h.host_id for h in hosts] == ["h1"]
