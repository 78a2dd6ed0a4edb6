"""Answers to the questions Docker's embedded DNS forwards to pyoverlay: the names of the networks the
asking container shares with others, on any host. Anything else is not ours (None): it is forwarded to
the host's resolvers. Pure: the wire format is dnspython's."""

from __future__ import annotations

import random

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from .index import NameIndex

TTL = 0  # names follow containers within a second: nothing may cache them longer than Docker does


def answer(
    query: dns.message.Message, networks: frozenset[str] | None, index: NameIndex
) -> dns.message.Message | None:
    """The response for a question about a name on ``networks`` (the asker's), or None when the name is
    not one of theirs."""
    if not networks or query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
        return None
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return None
    if question.rdtype == dns.rdatatype.PTR:
        return _pointer(query, question.name, networks, index)
    addresses = index.lookup(networks, question.name.to_text())
    if not addresses:
        return None
    random.shuffle(addresses)  # as Docker does: clients that take the first spread over all holders
    response = _response(query)
    for rdtype, family in ((dns.rdatatype.A, False), (dns.rdatatype.AAAA, True)):
        matching = [a for a in addresses if (":" in a) is family]
        if matching and question.rdtype in (rdtype, dns.rdatatype.ANY):
            response.answer.append(_rrset(question.name, rdtype, matching))
    # Another type (MX, …, or AAAA of a name with IPv4 only): the name exists, without such records
    # (NODATA). NXDOMAIN here would make a resolver that asks A and AAAA at once drop the A answer too.
    return response


def _pointer(
    query: dns.message.Message, qname: dns.name.Name, networks: frozenset[str], index: NameIndex
) -> dns.message.Message | None:
    try:
        address = dns.reversename.to_address(qname)  # IPv6 in canonical text, as the index keeps it
    except (dns.exception.SyntaxError, ValueError):
        return None
    name = index.reverse(networks, address)
    if name is None:
        return None
    response = _response(query)
    response.answer.append(_rrset(qname, dns.rdatatype.PTR, [name + "."]))
    return response


def _response(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA | dns.flags.RA
    response.set_rcode(dns.rcode.NOERROR)
    return response


def _rrset(name: dns.name.Name, rdtype: dns.rdatatype.RdataType, values: list[str]):
    return dns.rrset.from_text_list(name, TTL, dns.rdataclass.IN, rdtype, values)


def failure(query: dns.message.Message) -> dns.message.Message:
    """SERVFAIL: no upstream answered (Docker's embedded DNS then asks its next server)."""
    return _error(query, dns.rcode.SERVFAIL)


def refused(query: dns.message.Message) -> dns.message.Message:
    """REFUSED: the asker is not a container of this host (the name service is no open resolver)."""
    return _error(query, dns.rcode.REFUSED)


def _error(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response
