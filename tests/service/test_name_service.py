"""The name service of host A over real UDP and TCP sockets: names of host B's containers come from the
store through A's event loop; other names go to an upstream DNS server the test runs itself."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from plugin.nameservice.index import Askers
from plugin.nameservice.server import DnsServer
from plugin.nameservice.upstreams import Upstreams
from tests.dns_upstream import Upstream

from .conftest import Host

ASKER = "127.0.0.2"  # the test asks from here; Askers says which networks that "container" is on


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream({"www.example.test": "192.0.2.10"})
    yield server
    server.close()


@pytest.fixture
def name_service(host_a: Host, upstream: Upstream) -> Iterator[DnsServer]:
    askers = Askers()
    upstreams = Upstreams((f"{upstream.address}:{upstream.port}",), "127.0.0.1")
    server = DnsServer("127.0.0.1", 0, host_a.loop.names, askers, upstreams)
    server.bind()
    stop = threading.Event()
    thread = threading.Thread(target=server.run, args=(stop,), daemon=True)
    thread.start()
    yield server
    stop.set()
    server.close()
    thread.join(5)


def ask(server: DnsServer, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=server.port, timeout=5, source=ASKER)
    return dns.query.udp(query, "127.0.0.1", port=server.port, timeout=5, source=ASKER)


def addresses(response: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in response.answer for r in rrset)


def test_names_of_other_hosts_resolve_follow_renames_and_go(host_a: Host, host_b: Host, name_service):
    theirs = host_b.create_network("10.30.0.0/24")
    box2, address2, _ = host_b.create_endpoint(theirs)
    host_b.store.set_endpoint_name(box2, "box2", ("web",))
    mine = host_a.create_network("10.30.0.0/24")
    host_a.loop.relist()
    host_a.settle()
    name_service.askers.replace({ASKER: frozenset({host_a.cluster(mine).network_id})})
    ip2 = address2.split("/")[0]
    for _ in range(3):  # again: from the answer cache, with each question's own ID (dnspython checks)
        assert addresses(ask(name_service, "box2")) == [ip2]
    assert addresses(ask(name_service, "web", tcp=True)) == [ip2]
    response = ask(name_service, "box2", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR and response.answer == []
    host_b.store.set_endpoint_name(box2, "renamed", ())
    host_a.drain(lambda: host_a.loop.names.lookup({theirs.docker_id}, "renamed") != [])
    assert addresses(ask(name_service, "renamed")) == [ip2]
    assert ask(name_service, "box2").rcode() == dns.rcode.NXDOMAIN  # the upstream's word now
    host_b.delete_endpoint(theirs, box2)
    host_a.drain(lambda: host_a.loop.names.lookup({theirs.docker_id}, "renamed") == [])
    assert ask(name_service, "renamed").rcode() == dns.rcode.NXDOMAIN


def test_a_container_off_the_network_does_not_get_its_names(host_a: Host, host_b: Host, name_service):
    theirs = host_b.create_network("10.30.0.0/24")
    box2, _, _ = host_b.create_endpoint(theirs)
    host_b.store.set_endpoint_name(box2, "box2")
    host_a.create_network("10.30.0.0/24")
    other = host_a.create_network("10.31.0.0/24")
    host_a.loop.relist()
    host_a.settle()
    name_service.askers.replace({ASKER: frozenset({host_a.cluster(other).network_id})})
    assert ask(name_service, "box2").rcode() == dns.rcode.NXDOMAIN


def test_other_names_go_to_the_upstream_over_udp_and_tcp(name_service, upstream: Upstream):
    name_service.askers.replace({ASKER: frozenset()})
    for tcp in (False, True):
        response = ask(name_service, "www.example.test", tcp=tcp)
        assert addresses(response) == ["192.0.2.10"]
    assert ask(name_service, "nothing.example.test").rcode() == dns.rcode.NXDOMAIN
    assert upstream.questions.count("www.example.test") == 2


def test_an_unknown_asker_asks_docker_sync_for_a_pass_first(host_a: Host, host_b: Host, name_service):
    theirs = host_b.create_network("10.30.0.0/24")
    box2, address2, _ = host_b.create_endpoint(theirs)
    host_b.store.set_endpoint_name(box2, "box2")
    mine = host_a.create_network("10.30.0.0/24")
    host_a.loop.relist()
    host_a.settle()
    network_id = host_a.cluster(mine).network_id

    askers = name_service.askers
    askers.replace({}, askers.requests())  # a pass that listed containers before this one started
    refreshes = []

    def refresh() -> None:  # Docker sync's pass: one already under way ends first, then the asked one
        refreshes.append(1)
        covers = askers.requests()
        threading.Timer(0.02, askers.replace, [{}, covers - 1]).start()
        threading.Timer(0.1, askers.replace, [{ASKER: frozenset({network_id})}, covers]).start()

    name_service.refresh = refresh
    assert addresses(ask(name_service, "box2")) == [address2.split("/")[0]]
    assert refreshes == [1]


def test_no_upstream_answers_servfail(host_a: Host, upstream: Upstream):
    upstream.close()
    server = DnsServer(
        "127.0.0.1", 0, host_a.loop.names, Askers(), Upstreams((), "127.0.0.1", "/nonexistent")
    )
    server.askers.replace({ASKER: frozenset()})
    server.bind()
    stop = threading.Event()
    threading.Thread(target=server.run, args=(stop,), daemon=True).start()
    try:
        response = ask(server, "www.example.test")
        assert response.rcode() == dns.rcode.SERVFAIL and not response.flags & dns.flags.AA
    finally:
        stop.set()
        server.close()


def test_a_stranger_is_refused_after_one_wait_for_docker_sync(name_service, upstream: Upstream):
    refreshes = []
    name_service.refresh = lambda: refreshes.append(1)  # Docker sync never learns ASKER here
    for tcp in (False, True, False):
        assert ask(name_service, "www.example.test", tcp=tcp).rcode() == dns.rcode.REFUSED
    assert refreshes == [1] and upstream.questions == []  # no open resolver


def test_the_host_itself_is_served(host_a: Host, upstream: Upstream):
    """--network host containers and the host ask from the service address itself."""
    upstreams = Upstreams((f"{upstream.address}:{upstream.port}",), ASKER)
    server = DnsServer(ASKER, 0, host_a.loop.names, Askers(), upstreams)
    server.bind()
    stop = threading.Event()
    threading.Thread(target=server.run, args=(stop,), daemon=True).start()
    try:
        query = dns.message.make_query("www.example.test", "A")
        response = dns.query.udp(query, ASKER, port=server.port, timeout=5, source=ASKER)
        assert addresses(response) == ["192.0.2.10"]
    finally:
        stop.set()
        server.close()
