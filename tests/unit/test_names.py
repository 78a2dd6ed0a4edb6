"""The name service's pure parts: the name index, Docker's container list, and the answers."""

from dataclasses import replace

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename

from kvstore import Endpoint
from plugin.containers import attached_endpoints, container_addresses
from plugin.nameservice.answers import answer
from plugin.nameservice.index import NameIndex


def ep(endpoint_id: str, network_id: str, address: str, name: str, aliases=(), host="h1") -> Endpoint:
    return Endpoint(endpoint_id, network_id, host, "10.99.0.1", "02:42:00:00:00:01", address, name, aliases)


def index() -> NameIndex:
    names = NameIndex()
    names.update(
        "n1",
        "Ov",
        [
            ep("e1", "n1", "10.0.0.2/24", "box1", ("web",)),
            ep("e2", "n1", "10.0.0.3/24", "box2", ("web", "db"), host="h2"),
            ep("e3", "n1", "10.0.0.4/24", ""),  # name not learned yet: no record
        ],
    )
    names.update("n2", "other", [ep("e4", "n2", "10.1.0.2/24", "box4")])
    return names


def test_names_aliases_and_network_qualified_names():
    names = index()
    assert names.lookup({"n1"}, "box2") == ["10.0.0.3"]
    assert names.lookup({"n1"}, "BOX2.") == ["10.0.0.3"]
    assert names.lookup({"n1"}, "web") == ["10.0.0.2", "10.0.0.3"]  # one alias, two containers
    assert names.lookup({"n1"}, "db.ov") == ["10.0.0.3"]
    assert names.lookup({"n1"}, "db.other") == []


def test_names_are_scoped_to_the_askers_networks():
    names = index()
    assert names.lookup({"n1"}, "box4") == []
    assert names.lookup({"n1", "n2"}, "box4") == ["10.1.0.2"]
    assert names.lookup(set(), "box2") == []
    names.drop("n1")
    assert names.lookup({"n1"}, "box2") == []


def test_reverse_names():
    names = index()
    assert names.reverse({"n1"}, "10.0.0.3") == "box2"
    assert names.reverse({"n2"}, "10.0.0.3") is None


def ask(name: str, rdtype: str = "A", networks=frozenset({"n1"})):
    return answer(dns.message.make_query(name, rdtype), networks, index())


def test_answers_a_records_of_all_holders():
    response = ask("web")
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert sorted(r.address for r in response.answer[0]) == ["10.0.0.2", "10.0.0.3"]


def test_other_types_of_our_names_are_nodata_not_nxdomain():
    response = ask("box2", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR and response.answer == []
    response = ask("box2", "MX")
    assert response.rcode() == dns.rcode.NOERROR and response.answer == []


def dual_index() -> NameIndex:
    names = NameIndex()
    dual = Endpoint("e1", "n1", "h1", "10.99.0.1", "02:42:0a:00:00:02", "10.0.0.2/24", "dual", ("web",))
    only6 = Endpoint("e2", "n1", "h2", "10.99.0.2", "02:42:00:00:00:03", None, "six", ("web",))
    names.update("n1", "ov", [replace(dual, address6="fd00::2/64"), replace(only6, address6="fd00::3/64")])
    return names


def test_aaaa_answers_ipv6_addresses_and_a_only_ipv4_ones():
    names = dual_index()

    def query(name: str, rdtype: str):
        return answer(dns.message.make_query(name, rdtype), frozenset({"n1"}), names)

    assert [r.address for r in query("dual", "AAAA").answer[0]] == ["fd00::2"]
    assert [r.address for r in query("dual", "A").answer[0]] == ["10.0.0.2"]
    assert sorted(r.address for r in query("web", "AAAA").answer[0]) == ["fd00::2", "fd00::3"]
    six = query("six", "A")  # an IPv6-only container: the name is ours, with no A record
    assert six.rcode() == dns.rcode.NOERROR and six.answer == []
    both = query("dual.ov", "ANY")
    assert {r.rdtype for r in both.answer} == {dns.rdatatype.A, dns.rdatatype.AAAA}
    pointer = query(dns.reversename.from_address("fd00::3").to_text(), "PTR")
    assert [r.target.to_text() for r in pointer.answer[0]] == ["six."]


def test_names_not_ours_and_unknown_askers_are_left_to_the_upstream():
    assert ask("example.org") is None
    assert ask("box4") is None  # on a network the asker is not on
    assert ask("box2", networks=frozenset()) is None
    assert ask("box2", networks=None) is None


def test_pointer_records():
    response = ask(dns.reversename.from_address("10.0.0.3").to_text(), "PTR")
    assert [r.target.to_text() for r in response.answer[0]] == ["box2."]
    assert ask(dns.reversename.from_address("10.9.9.9").to_text(), "PTR") is None


# Trimmed from what GET /containers/json answers (Docker 20.10 has Aliases; 28 also DNSNames)
SUMMARIES = [
    {
        "Id": "c1" * 32,
        "Names": ["/box1"],
        "NetworkSettings": {
            "Networks": {
                "ov": {
                    "NetworkID": "d1",
                    "EndpointID": "e1",
                    "IPAddress": "10.0.0.2",
                    "Aliases": ["web", "c1c1c1c1c1c1"],
                },
                "bridge": {"NetworkID": "b0", "EndpointID": "x1", "IPAddress": "172.17.0.2", "Aliases": None},
            }
        },
    },
    {
        "Id": "c2" * 32,
        "Names": ["/box2"],
        "NetworkSettings": {
            "Networks": {
                "ov": {
                    "NetworkID": "d1",
                    "EndpointID": "e2",
                    "IPAddress": "10.0.0.3",
                    "Aliases": ["db"],
                    "DNSNames": ["box2", "db", "c2c2c2c2c2c2"],
                }
            }
        },
    },
    {"Id": "c3" * 32, "Names": ["/stopped"], "NetworkSettings": {"Networks": {"ov": {"NetworkID": "d1"}}}},
]


def test_endpoints_on_our_networks_with_their_names():
    found = attached_endpoints(SUMMARIES, {"d1"})
    assert set(found) == {"e1", "e2"}
    assert (found["e1"].name, found["e1"].aliases) == ("box1", ("web", "c1c1c1c1c1c1"))
    assert found["e2"].aliases == ("db", "c2c2c2c2c2c2")  # DNSNames wins, without the name itself
    assert found["e1"].container_id == "c1" * 32


def test_every_address_a_container_may_ask_from():
    gateway = {"Containers": {"c2" * 32: {"IPv4Address": "172.18.0.3/16"}}}
    addresses = container_addresses(SUMMARIES, gateway)
    assert addresses == {
        "10.0.0.2": "c1" * 32,
        "172.17.0.2": "c1" * 32,
        "10.0.0.3": "c2" * 32,
        "172.18.0.3": "c2" * 32,
    }
    assert container_addresses([], None) == {}
