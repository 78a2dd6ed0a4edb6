"""etcd with client certificates and least privilege, for real: the agents' user reaches pyoverlay's prefix
and nothing else, and every TLS mistake ends in one clear StoreUnavailable naming its cause (never a hang,
never grpc's own words alone). The whole store contract also runs as that user (make_store "etcd-mtls")."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from kvstore import Host, Network, Store, StoreUnavailable
from kvstore.etcd_conn import EtcdConnection
from kvstore.kv import Delete, Put
from kvstore.kv_etcd import EtcdKV
from tests.etcd_server import AGENT_PREFIX, SecuredEtcd
from tests.watching import Collector

pytestmark = pytest.mark.faults  # the security cases of the fault matrix (issue 12)


T = TypeVar("T")
OUTSIDE = "/elsewhere/secret"  # what another tenant of the etcd keeps
BESIDE = "/pyoverlay-not-ours/key"  # shares the prefix's first characters, not the prefix itself


def returns(call: Callable[[], T], within: float = 30) -> T:
    """``call()``'s result or exception; fails the test if it is still running after ``within`` s."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(("ok", call()))
        except BaseException as exc:  # handed back to the test
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert outcome, f"the call hung for {within}s"
    kind, value = outcome[0]
    if kind == "raised":
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def agent_kv(secured: SecuredEtcd, **tls: str) -> EtcdKV:
    return EtcdKV(EtcdConnection([secured.server.endpoint], timeout=3, **(tls or secured.store_tls())))


def test_the_agents_user_works_under_its_prefix_and_nowhere_else(tls_etcd: SecuredEtcd) -> None:
    server = tls_etcd.server
    server.etcdctl("put", OUTSIDE, "root's")
    server.etcdctl("put", BESIDE, "root's")
    kv = agent_kv(tls_etcd)
    try:
        assert kv.txn([], [Put(AGENT_PREFIX + "probe", "mine")])
        assert kv.get(AGENT_PREFIX + "probe")[0] is not None
        for key in (OUTSIDE, BESIDE):
            with pytest.raises(
                StoreUnavailable, match=r"PERMISSION_DENIED.*readwrite on the prefix /pyoverlay/"
            ):
                kv.get(key)
            with pytest.raises(StoreUnavailable, match="PERMISSION_DENIED"):
                kv.txn([], [Put(key, "overwritten")])
            with pytest.raises(StoreUnavailable, match="PERMISSION_DENIED"):
                kv.txn([], [Delete(key)])
        with pytest.raises(StoreUnavailable, match="PERMISSION_DENIED"):
            kv.range("/")  # every key: more than the prefix
        with pytest.raises(StoreUnavailable, match="PERMISSION_DENIED"):
            kv.range("/pyoverlay")  # the prefix without its slash reaches BESIDE too
    finally:
        kv.txn([], [Delete(AGENT_PREFIX + "probe")])
        kv.close()
    assert server.etcdctl("get", "--print-value-only", OUTSIDE).strip() == "root's"
    assert server.etcdctl("get", "--print-value-only", BESIDE).strip() == "root's"


def test_a_store_as_the_agents_user_registers_watches_and_forgets(tls_etcd: SecuredEtcd) -> None:
    """The agent's calls in one place (make_store "etcd-mtls" runs the whole contract): leases, a
    transaction, a watch from a revision, and the operator's forget_host."""
    tls_etcd.server.etcdctl("del", "--prefix", AGENT_PREFIX)
    store = Store(agent_kv(tls_etcd))
    try:
        store.register_host(Host("h1", "192.0.2.1"), ttl=5)
        store.register_host(Host("h1", "192.0.2.1"), ttl=5)  # the heartbeat: a keepalive
        _, revision = store.networks_at()
        seen = Collector()
        watch = store.watch_networks(revision + 1, seen)
        created = store.create_network("h1", "dockA", Network("dockA", 0))
        event = seen.first()
        assert not isinstance(event, Exception), event
        assert (event.kind, event.key_id) == ("network", created.network_id)
        watch.cancel()
        assert [h.host_id for h in store.list_hosts()] == ["h1"]
        store.forget_host("h1")
        assert store.knows_host("h1") is False
    finally:
        store.close()


def test_without_a_client_certificate_the_error_says_so(tls_etcd: SecuredEtcd) -> None:
    store = Store(agent_kv(tls_etcd, ca_cert=tls_etcd.ca.cert))
    with pytest.raises(StoreUnavailable, match="requires a client certificate .* none is set"):
        returns(store.list_hosts)
    store.close()


def test_a_certificate_another_ca_signed_is_refused_by_name(tls_etcd: SecuredEtcd) -> None:
    store = Store(agent_kv(tls_etcd, **tls_etcd.store_tls(tls_etcd.stranger)))
    with pytest.raises(
        StoreUnavailable, match="refused the client certificate .*not signed by a CA etcd trusts"
    ):
        returns(store.list_hosts)
    store.close()


def test_a_server_the_configured_ca_did_not_sign_is_refused_by_name(tls_etcd: SecuredEtcd, tmp_path) -> None:
    wrong_ca = tls_etcd.stranger.cert  # any certificate but etcd's CA
    tls = {**tls_etcd.store_tls(), "ca_cert": wrong_ca}
    store = Store(agent_kv(tls_etcd, **tls))
    with pytest.raises(StoreUnavailable, match=f"server certificate is not signed by the CA in {wrong_ca}"):
        returns(store.list_hosts)
    store.close()


def test_unusable_tls_files_are_named_before_any_connection(tls_etcd: SecuredEtcd, tmp_path) -> None:
    other_key = tls_etcd.stranger.key
    store = Store(agent_kv(tls_etcd, **{**tls_etcd.store_tls(), "cert_key": other_key}))
    with pytest.raises(StoreUnavailable, match=f"{tls_etcd.agent.cert} and key {other_key} are not"):
        returns(store.list_hosts)
    store.close()
    missing = str(tmp_path / "absent.pem")
    store = Store(agent_kv(tls_etcd, **{**tls_etcd.store_tls(), "ca_cert": missing}))
    with pytest.raises(StoreUnavailable, match=f"cannot read etcd TLS file {missing}"):
        returns(store.list_hosts)
    store.close()
    with pytest.raises(ValueError, match="certificate and its key go together"):
        EtcdConnection([tls_etcd.server.endpoint], cert_cert=tls_etcd.agent.cert)  # grpc would abort
