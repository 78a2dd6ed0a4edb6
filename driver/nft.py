"""nftables over netlink (pyroute2), for the VXLAN allow-list (vtep_filter) and the ports' source checks
(port_security): a socket in a given namespace, rule expressions, and batches committed as one
transaction (all or nothing). pyroute2's NFTables covers single commands; what it lacks (several
messages in one transaction, verdict maps) is built here from its message classes.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import Cmp, Regs
from pyroute2.nftables.expressions import genex
from pyroute2.nftables.main import NFTables

from .errors import DataplaneError

# message types (linux/netfilter/nf_tables.h)
NEWTABLE, GETTABLE, DELTABLE = 0, 1, 2
NEWCHAIN, GETCHAIN, DELCHAIN = 3, 4, 5
NEWRULE, GETRULE, DELRULE = 6, 7, 8
NEWSET, GETSET, DELSET = 9, 10, 11
NEWSETELEM, GETSETELEM, DELSETELEM = 12, 13, 14
_BATCH_BEGIN, _BATCH_END = 0x10, 0x11

# expression constants
META_IIFNAME, META_L4PROTO = 6, 16
LL, NETWORK, TRANSPORT = 0, 1, 2  # payload bases
DROP, ACCEPT, JUMP = 0, 1, -3  # verdicts
DATA_VERDICT = 0xFFFFFF00  # a verdict map's data type
TYPE_IFNAME = 41
IFNAMSIZ = 16

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def nftables(netns: str | None, family: int, what: str) -> Iterator[NFTables]:
    """An nftables socket in netns (a path; None: this thread's). A socket belongs to the namespace it
    was opened in: this thread enters netns just to open it (no fork, unlike pyroute2's netns option)."""
    try:
        if netns is None:
            nft = NFTables(nfgen_family=family)
        else:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                target = os.open(netns, os.O_RDONLY)
                try:
                    _setns(target)
                    try:
                        nft = NFTables(nfgen_family=family)
                    finally:
                        _setns(own)
                finally:
                    os.close(target)
            finally:
                os.close(own)
    except OSError as exc:
        raise DataplaneError(f"{what}: open nftables socket in {netns or 'this netns'}: {exc}") from exc
    try:
        yield nft
    finally:
        nft.close()


def message(
    msg_class: Any, msg_type: int, family: int, attrs: list[tuple[str, Any]], create: bool = False
) -> Any:
    msg = msg_class()
    msg["attrs"] = [list(a) for a in attrs]
    msg["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | msg_type
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if create else 0)
    msg["nfgen_family"] = family
    return msg


def commit(nft: NFTables, messages: list[Any]) -> None:
    """Send messages as one transaction; NetlinkError (the first failure) if the kernel refused it."""
    begin, end = nfgen_msg(), nfgen_msg()
    for marker, msg_type in ((begin, _BATCH_BEGIN), (end, _BATCH_END)):
        marker["res_id"] = NFNL_SUBSYS_NFTABLES
        marker["header"]["type"] = msg_type
        marker["header"]["flags"] = NLM_F_REQUEST

    async def send() -> None:
        async for _ in nft.asyncore.nlm_request_batch([begin, *messages, end]):
            pass

    nft._run_with_cleanup(send)


def names(messages: list[Any], attr: str, table_attr: str, table: str) -> set[str]:
    return {m.get_attr(attr) for m in messages if m.get_attr(table_attr) == table}


# -- expressions: each a list of expression attributes, a rule is their concatenation ---------------


def meta(key: int) -> list[Any]:
    return [genex("meta", {"key": key, "dreg": Regs.NFT_REG_1})]


def payload(base: int, offset: int, length: int) -> list[Any]:
    return [genex("payload", {"dreg": Regs.NFT_REG_1, "base": base, "offset": offset, "len": length})]


def cmp(data: bytes, equal: bool = True) -> list[Any]:
    op = Cmp.NFT_CMP_EQ if equal else Cmp.NFT_CMP_NEQ
    return [genex("cmp", {"sreg": Regs.NFT_REG_1, "op": op, "data": {"attrs": [("NFTA_DATA_VALUE", data)]}})]


def match(base: int, offset: int, data: bytes, equal: bool = True) -> list[Any]:
    return payload(base, offset, len(data)) + cmp(data, equal)


def lookup(set_name: str, inverted: bool = False, verdict_map: bool = False) -> list[Any]:
    args: dict[str, Any] = {"set": set_name, "sreg": Regs.NFT_REG_1}
    if verdict_map:
        args["dreg"] = Regs.NFT_REG_VERDICT
    args["flags"] = {"NFT_LOOKUP_F_INV"} if inverted else set()
    return [genex("lookup", args)]


def counter() -> list[Any]:
    return [genex("counter", {})]


def verdict(code: int, chain: str | None = None) -> list[Any]:
    attrs: list[tuple[str, Any]] = [("NFTA_VERDICT_CODE", code)]
    if chain is not None:
        attrs.append(("NFTA_VERDICT_CHAIN", chain))
    data = {"attrs": [("NFTA_DATA_VERDICT", {"attrs": attrs})]}
    return [genex("immediate", {"dreg": Regs.NFT_REG_VERDICT, "data": data})]


def ifname(name: str) -> bytes:
    """An interface name as the kernel compares it (meta iifname): NUL-padded to IFNAMSIZ."""
    return name.encode().ljust(IFNAMSIZ, b"\0")


INET = socket.AF_INET
BRIDGE = socket.AF_BRIDGE
