"""nftables over netlink, for the VXLAN allow-list (vtep_filter) and the ports' source checks (port_security).

Changes go as batches, one transaction each (all or nothing), encoded here with struct: pyroute2 takes
~0.75 ms of Python per nftables message to encode (a port's 14 messages: 11 ms, measured), which
CreateEndpoint cannot afford; this takes microseconds. Reading (tables, set elements) uses pyroute2's
NFTables. Both open their sockets in a given namespace without a fork: the thread enters the namespace
just to create the socket (a socket belongs to the namespace it was made in).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2.nftables.main import NFTables

from .errors import DataplaneError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
# message types (linux/netfilter/nf_tables.h)
NEWTABLE, DELTABLE, NEWCHAIN, DELCHAIN, NEWRULE, DELRULE = 0, 2, 3, 5, 6, 8
NEWSET, NEWSETELEM, DELSETELEM = 9, 12, 14
_BATCH_BEGIN, _BATCH_END = 0x10, 0x11
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE, _NLM_F_APPEND = 0x1, 0x4, 0x200, 0x400, 0x800
_NLMSG_ERROR = 2
_NLA_F_NESTED = 0x8000
_TIMEOUT = 5.0  # seconds for the kernel's answer to a batch

# expression constants
META_IIFNAME, META_L4PROTO = 6, 16
LL, NETWORK, TRANSPORT = 0, 1, 2  # payload bases
DROP, ACCEPT, JUMP = 0, 1, -3  # verdicts
_REG_VERDICT, _REG_1 = 0, 1
REG32_04 = 12  # the 32-bit register after the 16 bytes of _REG_1: a concatenation's second field
_CMP_EQ, _CMP_NEQ = 0, 1
_LOOKUP_F_INV = 1
SET_MAP = 0x8
DATA_VERDICT = 0xFFFFFF00  # a verdict map's data type
TYPE_IPV4_ADDR, TYPE_IFNAME = 7, 41
IFNAMSIZ = 16
HOOK_PREROUTING, HOOK_INPUT = 0, 1

INET = socket.AF_INET
INET6 = socket.AF_INET6
BRIDGE = socket.AF_BRIDGE

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def _entered(netns: str | None) -> Iterator[None]:
    """This thread in netns (a path; None: stay) for the duration: only to create sockets."""
    if netns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


@contextmanager
def nftables(netns: str | None, family: int, what: str) -> Iterator[NFTables]:
    """pyroute2's nftables socket in netns, for reading."""
    try:
        with _entered(netns):
            sock = NFTables(nfgen_family=family)
    except OSError as exc:
        raise DataplaneError(f"{what}: open nftables socket in {netns or 'this netns'}: {exc}") from exc
    try:
        yield sock
    finally:
        sock.close()


# -- attributes ---------------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + bytes(-len(data) % 4)


def nest(kind: int, *children: bytes) -> bytes:
    return attr(kind | _NLA_F_NESTED, b"".join(children))


def be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!i" if value < 0 else "!I", value))


def text(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def _data(value: bytes) -> bytes:
    return attr(1, value)  # NFTA_DATA_VALUE


def _verdict_data(code: int, chain: str | None = None) -> bytes:
    return nest(2, be32(1, code), *([text(2, chain)] if chain else []))  # NFTA_DATA_VERDICT


# -- expressions: bytes of NFTA_LIST_ELEM entries; a rule's expressions are their concatenation -----


def _expr(name: str, *data: bytes) -> bytes:
    return nest(1, text(1, name), *([nest(2, *data)] if data else []))


def meta(key: int) -> bytes:
    return _expr("meta", be32(1, _REG_1), be32(2, key))


def payload(base: int, offset: int, length: int, dreg: int = _REG_1) -> bytes:
    return _expr("payload", be32(1, dreg), be32(2, base), be32(3, offset), be32(4, length))


def cmp(value: bytes, equal: bool = True) -> bytes:
    return _expr("cmp", be32(1, _REG_1), be32(2, _CMP_EQ if equal else _CMP_NEQ), nest(3, _data(value)))


def match(base: int, offset: int, value: bytes, equal: bool = True) -> bytes:
    return payload(base, offset, len(value)) + cmp(value, equal)


def lookup(set_name: str, inverted: bool = False, verdict_map: bool = False) -> bytes:
    parts = [text(1, set_name), be32(2, _REG_1)]
    if verdict_map:
        parts.append(be32(3, _REG_VERDICT))
    return _expr("lookup", *parts, be32(5, _LOOKUP_F_INV if inverted else 0))


def counter() -> bytes:
    return _expr("counter")


def verdict(code: int, chain: str | None = None) -> bytes:
    return _expr("immediate", be32(1, _REG_VERDICT), nest(2, _verdict_data(code, chain)))


def ifname(name: str) -> bytes:
    """An interface name as the kernel compares it (meta iifname): NUL-padded to IFNAMSIZ."""
    return name.encode().ljust(IFNAMSIZ, b"\0")


# -- messages -------------------------------------------------------------------------------------


class Message:
    def __init__(self, msg_type: int, family: int, attrs: bytes, flags: int = 0) -> None:
        self.msg_type, self.family, self.attrs, self.flags = msg_type, family, attrs, flags

    def encode(self, seq: int) -> bytes:
        body = struct.pack("=BBH", self.family, 0, 0) + self.attrs
        kind = (NFNL_SUBSYS_NFTABLES << 8) | self.msg_type
        return (
            struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_REQUEST | _NLM_F_ACK | self.flags, seq, 0)
            + body
        )


def table(family: int, name: str, exclusive: bool = False) -> Message:
    return Message(NEWTABLE, family, text(1, name), _NLM_F_CREATE | (_NLM_F_EXCL if exclusive else 0))


def delete_table(family: int, name: str) -> Message:
    return Message(DELTABLE, family, text(1, name))


def chain(family: int, table_name: str, name: str, hook: tuple[int, int] | None = None) -> Message:
    """A chain; with hook (number, priority) a base chain of type filter, policy accept."""
    attrs = text(1, table_name) + text(3, name)
    if hook is not None:
        attrs += nest(4, be32(1, hook[0]), be32(2, hook[1])) + text(7, "filter")
    return Message(NEWCHAIN, family, attrs, _NLM_F_CREATE)


def delete_chain(family: int, table_name: str, name: str) -> Message:
    return Message(DELCHAIN, family, text(1, table_name) + text(3, name))


def rule(family: int, table_name: str, chain_name: str, expressions: bytes) -> Message:
    """A rule appended to the chain."""
    attrs = text(1, table_name) + text(2, chain_name) + nest(4, expressions)
    return Message(NEWRULE, family, attrs, _NLM_F_CREATE | _NLM_F_APPEND)


def flush_chain(family: int, table_name: str, chain_name: str) -> Message:
    return Message(DELRULE, family, text(1, table_name) + text(2, chain_name))


def new_set(
    family: int, table_name: str, name: str, key_type: int, key_len: int, verdict_map: bool = False
) -> Message:
    attrs = text(1, table_name) + text(2, name) + be32(3, SET_MAP if verdict_map else 0)
    attrs += be32(4, key_type) + be32(5, key_len)
    if verdict_map:
        attrs += be32(6, DATA_VERDICT)
    return Message(NEWSET, family, attrs + be32(10, 1), _NLM_F_CREATE)


def elements(
    family: int, table_name: str, set_name: str, keys: list[bytes], jump: str | None = None, add: bool = True
) -> Message:
    """Add (or delete) set elements; with jump, map elements whose verdict is a jump to that chain."""
    items = [
        nest(1, nest(1, _data(key)), *([nest(2, _verdict_data(JUMP, jump))] if jump else [])) for key in keys
    ]
    attrs = text(1, table_name) + text(2, set_name) + nest(3, *items)
    return Message(NEWSETELEM if add else DELSETELEM, family, attrs, _NLM_F_CREATE if add else 0)


def commit(netns: str | None, messages: list[Message]) -> None:
    """Send messages as one transaction in netns (a path; None: this thread's); OSError with the first
    refused message's errno (then nothing of it was applied)."""
    if not messages:
        return
    with _entered(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    with sock:
        sock.bind((0, 0))
        marker = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
        begin = struct.pack("=IHHII", 20, _BATCH_BEGIN, _NLM_F_REQUEST, 0, 0) + marker
        end = struct.pack("=IHHII", 20, _BATCH_END, _NLM_F_REQUEST, len(messages) + 1, 0) + marker
        sock.sendall(begin + b"".join(m.encode(seq) for seq, m in enumerate(messages, 1)) + end)
        pending, failure = set(range(1, len(messages) + 1)), None
        sock.settimeout(_TIMEOUT)
        while pending:
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                if failure is None:
                    raise
                break  # the refused message is known: the others' acks do not matter
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                if kind == _NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", data, offset + 16)
                    pending.discard(seq)
                    if error and failure is None:
                        failure = (-error, seq)
                offset += (length + 3) & ~3 if length else len(data)
        if failure is not None:
            code, seq = failure
            raise OSError(code, f"{os.strerror(code)} (nftables message {seq} of {len(messages)})")
