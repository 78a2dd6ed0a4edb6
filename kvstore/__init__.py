"""Cluster state: networks, pools, addresses, endpoints and hosts. The only package importing etcd3.

``Store`` (store.py, networks.py, ipam.py) is the cluster policy, written once over the key-value
primitive of kv.py; ``EtcdKV`` and ``SqliteKV`` implement that primitive.
"""

from .host_store import HostStore
from .kv import KeyValue
from .model import (
    CONTAINER_KIND,
    GATEWAY_OWNER,
    HOST_KIND,
    REQUEST_OWNER_PREFIX,
    Compacted,
    Conflict,
    Endpoint,
    Event,
    Exhausted,
    Host,
    IdentityConflict,
    InvalidRequest,
    Network,
    NotFound,
    Pool,
    StoreError,
    StoreUnavailable,
)
from .store import Store

__all__ = [
    "CONTAINER_KIND",
    "GATEWAY_OWNER",
    "HOST_KIND",
    "REQUEST_OWNER_PREFIX",
    "Compacted",
    "Conflict",
    "Endpoint",
    "Event",
    "Exhausted",
    "Host",
    "HostStore",
    "IdentityConflict",
    "InvalidRequest",
    "KeyValue",
    "Network",
    "NotFound",
    "Pool",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_kv",
    "open_store",
]


def open_kv(
    etcd_endpoints: list[str],
    state_dir: str | None,
    *,
    ca_cert: str | None = None,
    cert_key: str | None = None,
    cert_cert: str | None = None,
) -> KeyValue:
    """etcd when endpoints are given (connecting lazily), else the embedded store in state_dir (None:
    in memory)."""
    if etcd_endpoints:
        from .etcd_conn import EtcdConnection
        from .kv_etcd import EtcdKV

        return EtcdKV(EtcdConnection(etcd_endpoints, ca_cert=ca_cert, cert_key=cert_key, cert_cert=cert_cert))
    from .kv_sqlite import SqliteKV
    from .legacy import import_legacy

    kv = SqliteKV(state_dir)
    if state_dir is not None:
        import_legacy(kv, state_dir)  # a store written before the key-value redesign
    return kv


def open_store(etcd_endpoints: list[str], state_dir: str | None, **tls: str | None) -> Store:
    """The cluster store over open_kv's primitive (same arguments)."""
    return Store(open_kv(etcd_endpoints, state_dir, **tls))
