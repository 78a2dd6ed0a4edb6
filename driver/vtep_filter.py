"""Only member hosts may inject VXLAN: an nftables table in the host's namespace (where the VXLAN devices'
UDP sockets live) drops UDP to the VXLAN port from any source not in its set of allowed VTEP addresses.

    table ip pyoverlay {
        set vteps { type ipv4_addr; elements = { ... } }
        chain vxlan-in-<port> {
            type filter hook input priority raw; policy accept;
            udp dport <port> ip saddr != @vteps counter drop
        }
    }

The kernel's VXLAN device accepts a packet from any source; this is the allow-list in front of it. The
input hook sees packets after reassembly, so a fragmented packet cannot slip past. The table stays in the
kernel when the agent stops (fail closed: a host added meanwhile is dropped until the agent is back).
Programmed through pyroute2's nftables netlink messages: no `nft` binary, no fork.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELTABLE,
    NFT_MSG_NEWSET,
    Cmp,
    Regs,
    nft_set_msg,
    nft_table_msg,
)
from pyroute2.nftables.expressions import genex, verdict
from pyroute2.nftables.main import NFTables, NFTSet

from .errors import DataplaneError

TABLE = "pyoverlay"
SET = "vteps"
CHAIN_PREFIX = "vxlan-in-"  # + the port: a changed VXLAN_PORT setting makes a new chain
_META_L4PROTO = 16  # NFT_META_L4PROTO
_PAYLOAD_NETWORK, _PAYLOAD_TRANSPORT = 1, 2
_NF_DROP = 0
_PRIORITY_RAW = -300
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def chain_name(port: int) -> str:
    return f"{CHAIN_PREFIX}{port}"


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def _nftables(netns: str | None) -> Iterator[NFTables]:
    """An nftables socket in netns (a path; None: this thread's). The socket belongs to the namespace it
    was opened in: this thread enters netns just to open it, which costs no fork (pyroute2's way)."""
    try:
        if netns is None:
            nft = NFTables(nfgen_family=socket.AF_INET)
        else:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                target = os.open(netns, os.O_RDONLY)
                try:
                    _setns(target)
                    try:
                        nft = NFTables(nfgen_family=socket.AF_INET)
                    finally:
                        _setns(own)
                finally:
                    os.close(target)
            finally:
                os.close(own)
    except OSError as exc:
        raise DataplaneError(
            f"nftables table {TABLE}: open socket in {netns or 'this netns'}: {exc}"
        ) from exc
    try:
        yield nft
    finally:
        nft.close()


def _rule(port: int) -> tuple[list[Any], ...]:
    """udp dport <port> ip saddr != @vteps counter drop"""

    def load(base: int, offset: int, length: int) -> list[Any]:
        args = {"dreg": Regs.NFT_REG_1, "base": base, "offset": offset, "len": length}
        return [genex("payload", args)]

    def equals(data: bytes) -> list[Any]:
        value = {"attrs": [("NFTA_DATA_VALUE", data)]}
        return [genex("cmp", {"sreg": Regs.NFT_REG_1, "op": Cmp.NFT_CMP_EQ, "data": value})]

    return (
        [genex("meta", {"key": _META_L4PROTO, "dreg": Regs.NFT_REG_1})],
        equals(bytes([socket.IPPROTO_UDP])),
        load(_PAYLOAD_TRANSPORT, 2, 2),
        equals(struct.pack("!H", port)),
        load(_PAYLOAD_NETWORK, 12, 4),
        [genex("lookup", {"set": SET, "sreg": Regs.NFT_REG_1, "flags": {"NFT_LOOKUP_F_INV"}})],
        [genex("counter", {})],
        verdict(_NF_DROP),
    )


def _names(messages: list[Any], attr: str, table_attr: str | None = None) -> set[str]:
    return {m.get_attr(attr) for m in messages if table_attr is None or m.get_attr(table_attr) == TABLE}


def _check(addresses: set[str]) -> set[str]:
    try:
        return {str(ipaddress.IPv4Address(a)) for a in addresses}
    except ValueError as exc:
        raise DataplaneError(f"nftables set {TABLE} {SET}: {exc}") from exc


def ensure(netns: str | None, port: int, addresses: set[str]) -> None:
    """The table with exactly ``addresses`` allowed to send to UDP ``port``; made, fixed or adopted."""
    allowed = _check(addresses)
    spec = NFTSet(table=TABLE, name=SET, key_type="ipv4_addr")
    operation = f"nftables table {TABLE}: allow VXLAN from {len(allowed)} VTEPs"
    with _nftables(netns) as nft:
        try:
            if TABLE in _names(nft.get_tables(), "NFTA_TABLE_NAME"):
                chains = _names(nft.get_chains(), "NFTA_CHAIN_NAME", "NFTA_CHAIN_TABLE")
                rules = [r for r in nft.get_rules() if r.get_attr("NFTA_RULE_TABLE") == TABLE]
                if chains != {chain_name(port)} or len(rules) != 1:  # another port, or made halfway
                    nft._command(nft_table_msg, {"del": NFT_MSG_DELTABLE}, "del", {"name": TABLE})
            if TABLE not in _names(nft.get_tables(), "NFTA_TABLE_NAME"):
                # the set and its elements first: the rule never meets an empty set (which drops all)
                nft.table("add", name=TABLE)
                nft._command(nft_set_msg, {"add": NFT_MSG_NEWSET}, "add", spec.as_netlink())
                if allowed:
                    nft.set_elems("add", set=spec, elements=allowed)
                nft.chain("add", table=TABLE, name=chain_name(port), hook="input", priority=_PRIORITY_RAW)
                nft.rule("add", table=TABLE, chain=chain_name(port), expressions=_rule(port))
                return
            present = {e.value for e in nft.set_elems("get", set=spec)}
            if allowed - present:
                nft.set_elems("add", set=spec, elements=allowed - present)
            if present - allowed:
                nft.set_elems("del", set=spec, elements=present - allowed)
        except (NetlinkError, OSError) as exc:
            raise DataplaneError(f"{operation}: {exc}") from exc


def remove(netns: str | None) -> bool:
    """Delete the table; False if there was none."""
    with _nftables(netns) as nft:
        try:
            if TABLE not in _names(nft.get_tables(), "NFTA_TABLE_NAME"):
                return False
            nft._command(nft_table_msg, {"del": NFT_MSG_DELTABLE}, "del", {"name": TABLE})
        except (NetlinkError, OSError) as exc:
            raise DataplaneError(f"nftables table {TABLE}: delete: {exc}") from exc
    return True


def allowed(netns: str | None) -> set[str] | None:
    """The addresses allowed now, or None without the table."""
    with _nftables(netns) as nft:
        try:
            if TABLE not in _names(nft.get_tables(), "NFTA_TABLE_NAME"):
                return None
            spec = NFTSet(table=TABLE, name=SET, key_type="ipv4_addr")
            return {e.value for e in nft.set_elems("get", set=spec)}
        except (NetlinkError, OSError) as exc:
            raise DataplaneError(f"nftables table {TABLE}: list {SET}: {exc}") from exc


class VtepFilter:
    """The filter of one host's namespace (path; None: this process's), as Dataplane.vteps."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns

    def allow(self, addresses: set[str], port: int) -> None:
        """Accept VXLAN (UDP to port) from these addresses only."""
        ensure(self.netns, port, addresses)

    def remove(self) -> bool:
        """Remove the filter (no network left here); False if there was none."""
        return remove(self.netns)

    def allowed(self) -> set[str] | None:
        return allowed(self.netns)
