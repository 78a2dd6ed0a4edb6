"""The name service's pure helpers: the answer cache, UDP truncation, and the fallback resolvers the
daemon setting names after it."""

import dns.flags
import dns.message
import dns.rrset

from kvstore import Endpoint
from plugin.cli import daemon_config
from plugin.nameservice.cache import AnswerCache
from plugin.nameservice.index import NameIndex
from plugin.nameservice.server import _udp_wire
from plugin.nameservice.upstreams import fallback_servers
from plugin.settings import Settings

NETS = frozenset({"n1"})


def question(name: str = "box2", qid: int = 1, pad: int = 0) -> bytes:
    query = dns.message.make_query(name, "A", use_edns=0 if pad else None, pad=pad)
    query.id = qid
    return query.to_wire()


def test_the_cache_answers_with_each_questions_id_until_the_names_change():
    index = NameIndex()
    cache = AnswerCache(index)
    wire = question(qid=7)
    cache.put(NETS, wire, b"\x00\x07answer", index.generation)
    assert cache.get(NETS, question(qid=9)) == b"\x00\x09answer"
    assert cache.get(frozenset({"n2"}), wire) is None  # another asker's networks: another answer
    index.update("n1", "ov", [])
    assert cache.get(NETS, wire) is None  # never served after a change


def test_an_answer_made_before_a_change_is_not_kept():
    index = NameIndex()
    cache = AnswerCache(index)
    made_at = index.generation
    index.drop("n1")  # the names changed while the answer was being made
    cache.put(NETS, question(), b"\x00\x01stale", made_at)
    assert cache.get(NETS, question()) is None


def test_the_cache_is_bounded_and_skips_big_questions():
    index = NameIndex()
    cache = AnswerCache(index, size=3)
    for i in range(5):
        cache.put(NETS, question(f"box{i}"), b"\x00\x01x", index.generation)
    assert len(cache._entries) <= 3
    padded = question(pad=1000)
    cache.put(NETS, padded, b"\x00\x01x", index.generation)
    assert cache.get(NETS, padded) is None


def test_an_answer_too_big_for_udp_is_truncated():
    query = dns.message.make_query("web", "A")
    response = dns.message.make_response(query)
    addresses = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(100)]
    response.answer.append(dns.rrset.from_text_list("web.", 0, "IN", "A", addresses))
    wire = _udp_wire(query, response)
    truncated = dns.message.from_wire(wire)
    assert len(wire) <= 512 and truncated.flags & dns.flags.TC and truncated.answer == []
    big = dns.message.make_query("web", "A", use_edns=0, payload=4096)
    assert len(dns.message.from_wire(_udp_wire(big, response)).answer[0]) == 100


def test_fallbacks_are_the_resolvers_a_container_can_reach(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver 169.254.53.53\n")
    assert fallback_servers((), "169.254.53.53", str(resolv)) == ["10.0.0.2"]
    assert fallback_servers(("10.1.1.1:5353", "10.2.2.2"), "169.254.53.53", str(resolv)) == ["10.2.2.2"]
    assert daemon_config(Settings(), str(resolv)) == {"dns": ["169.254.53.53", "10.0.0.2"]}
    assert daemon_config(Settings(dns_address=""), str(resolv)) == {}
    resolv.write_text("nameserver 127.0.0.53\n")  # systemd-resolved: nothing a container reaches
    assert daemon_config(Settings(), str(resolv)) == {"dns": ["169.254.53.53"]}


def test_names_index_counts_changes():
    index = NameIndex()
    before = index.generation
    index.update(
        "n1", "ov", [Endpoint("e1", "n1", "h1", "10.99.0.1", "02:42:0a:00:00:02", "10.0.0.2/24", "b")]
    )
    assert index.generation > before
