"""Cluster state: networks, pools, addresses, endpoints and hosts. The only package importing etcd3."""

from .base import Store
from .model import (
    GATEWAY_OWNER,
    Compacted,
    Conflict,
    Endpoint,
    Event,
    Exhausted,
    Host,
    InvalidRequest,
    Network,
    NotFound,
    Pool,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "GATEWAY_OWNER",
    "Compacted",
    "Conflict",
    "Endpoint",
    "Event",
    "Exhausted",
    "Host",
    "InvalidRequest",
    "Network",
    "NotFound",
    "Pool",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]


def open_store(
    etcd_endpoints: list[str],
    state_dir: str,
    *,
    ca_cert: str | None = None,
    cert_key: str | None = None,
    cert_cert: str | None = None,
) -> Store:
    """The etcd store when endpoints are given (connecting lazily), else the embedded one in state_dir."""
    if etcd_endpoints:
        from .etcd_store import EtcdStore

        return EtcdStore(etcd_endpoints, ca_cert=ca_cert, cert_key=cert_key, cert_cert=cert_cert)
    from .sqlite_store import SqliteStore

    return SqliteStore(state_dir)
