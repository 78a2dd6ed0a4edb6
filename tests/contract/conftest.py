"""Fixtures for the store contract: one ``store`` per key-value primitive, and a shared etcd server."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from kvstore import Store
from kvstore.etcd_conn import EtcdConnection
from kvstore.kv_etcd import EtcdKV
from kvstore.kv_sqlite import SqliteKV
from tests.etcd_server import EtcdServer, SecuredEtcd, etcd_available, secured_etcd

StoreFactory = Callable[[], Store]


def require_etcd() -> None:
    """Skip without /usr/bin/etcd, except in CI where a missing etcd is a broken runner."""
    if etcd_available():
        return
    if os.environ.get("CI"):
        pytest.fail("/usr/bin/etcd is missing on a CI runner: install etcd-server")
    pytest.skip("/usr/bin/etcd is not installed")


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd for the session; tests that stop or kill etcd start their own EtcdServer."""
    require_etcd()
    with EtcdServer() as server:
        yield server


@pytest.fixture(scope="session")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredEtcd]:
    """One etcd with client certificates and auth on; its agents' user reaches /pyoverlay/ only."""
    require_etcd()
    secured = secured_etcd(tmp_path_factory.mktemp("tls-etcd"))
    try:
        yield secured
    finally:
        secured.close()


@pytest.fixture
def fresh_etcd() -> Iterator[EtcdServer]:
    """An etcd of the test's own, for tests that kill or restart it."""
    require_etcd()
    with EtcdServer() as server:
        yield server


class _SharedMemoryStore(Store):
    """Stores of one test share one in-memory primitive, as hosts share one etcd; closing one is a
    no-op (the primitive goes with the test)."""

    def close(self) -> None:
        pass


@pytest.fixture(params=["sqlite", "memory", "etcd", "etcd-mtls"])
def make_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[StoreFactory]:
    """Opens another store on the same state: a second host, or the same host after a restart.
    "etcd-mtls" is etcd as docs/install.md sets it up: the store as the agents' least-privilege user."""
    opened: list[Store] = []
    if request.param.startswith("etcd"):
        tls: dict[str, str] = {}
        if request.param == "etcd-mtls":
            secured: SecuredEtcd = request.getfixturevalue("tls_etcd")
            server, tls = secured.server, secured.store_tls()
        else:
            server = request.getfixturevalue("etcd_server")
        server.etcdctl("del", "--prefix", "/pyoverlay/")

        def factory() -> Store:
            opened.append(Store(EtcdKV(EtcdConnection([server.endpoint], **tls))))
            return opened[-1]

    elif request.param == "memory":
        memory = SqliteKV(None)

        def factory() -> Store:
            opened.append(_SharedMemoryStore(memory))
            return opened[-1]

    else:

        def factory() -> Store:
            opened.append(Store(SqliteKV(str(tmp_path / "state" / "nested"))))
            return opened[-1]

    yield factory
    for store in opened:
        store.close()
    if request.param == "memory":
        memory.close()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    return make_store()
