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

import ipaddress
import socket
import struct
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nftsocket import (
    nft_chain_msg,
    nft_rule_msg,
    nft_set_elem_list_msg,
    nft_set_msg,
    nft_table_msg,
)
from pyroute2.nftables.main import NFTSet

from . import nft
from .errors import DataplaneError

TABLE = "pyoverlay"
SET = "vteps"
CHAIN_PREFIX = "vxlan-in-"  # + the port: a changed VXLAN_PORT setting makes a new chain
_PRIORITY_RAW = -300
_HOOK_INPUT = 1


def chain_name(port: int) -> str:
    return f"{CHAIN_PREFIX}{port}"


def _nftables(netns: str | None) -> Any:
    return nft.nftables(netns, nft.INET, f"nftables table {TABLE}")


def _rule(port: int) -> list[Any]:
    """udp dport <port> ip saddr != @vteps counter drop"""
    return [
        *nft.meta(nft.META_L4PROTO),
        *nft.cmp(bytes([socket.IPPROTO_UDP])),
        *nft.match(nft.TRANSPORT, 2, struct.pack("!H", port)),
        *nft.payload(nft.NETWORK, 12, 4),
        *nft.lookup(SET, inverted=True),
        *nft.counter(),
        *nft.verdict(nft.DROP),
    ]


def _create(port: int, allowed: set[str]) -> list[Any]:
    """The whole table in one transaction: never a rule without its set, or a set without its elements."""
    f = nft.INET
    chain = chain_name(port)
    hook = {"attrs": [("NFTA_HOOK_HOOKNUM", _HOOK_INPUT), ("NFTA_HOOK_PRIORITY", _PRIORITY_RAW)]}
    spec = NFTSet(table=TABLE, name=SET, key_type="ipv4_addr")
    messages = [
        nft.message(nft_table_msg, nft.NEWTABLE, f, [("NFTA_TABLE_NAME", TABLE)], create=True),
        nft.message(nft_set_msg, nft.NEWSET, f, list(spec.as_netlink().items()), create=True),
        nft.message(
            nft_chain_msg, nft.NEWCHAIN, f,
            [("NFTA_CHAIN_TABLE", TABLE), ("NFTA_CHAIN_NAME", chain), ("NFTA_CHAIN_HOOK", hook),
             ("NFTA_CHAIN_TYPE", "filter")],
            create=True,
        ),
        nft.message(
            nft_rule_msg, nft.NEWRULE, f,
            [("NFTA_RULE_TABLE", TABLE), ("NFTA_RULE_CHAIN", chain), ("NFTA_RULE_EXPRESSIONS", _rule(port))],
            create=True,
        ),
    ]  # fmt: skip
    if allowed:
        messages.insert(2, _elements(nft.NEWSETELEM, allowed))
    return messages


def _elements(msg_type: int, addresses: set[str]) -> Any:
    elements = [{"attrs": [("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", socket.inet_aton(a))]})]}
                for a in sorted(addresses)]  # fmt: skip
    attrs = [("NFTA_SET_ELEM_LIST_TABLE", TABLE), ("NFTA_SET_ELEM_LIST_SET", SET),
             ("NFTA_SET_ELEM_LIST_ELEMENTS", elements)]  # fmt: skip
    return nft.message(nft_set_elem_list_msg, msg_type, nft.INET, attrs, create=msg_type == nft.NEWSETELEM)


def _check(addresses: set[str]) -> set[str]:
    try:
        return {str(ipaddress.IPv4Address(a)) for a in addresses}
    except ValueError as exc:
        raise DataplaneError(f"nftables set {TABLE} {SET}: {exc}") from exc


def _tables(sock: Any) -> set[str]:
    return {m.get_attr("NFTA_TABLE_NAME") for m in sock.get_tables()}


def _present(sock: Any) -> set[str]:
    return {e.value for e in sock.set_elems("get", set=NFTSet(table=TABLE, name=SET, key_type="ipv4_addr"))}


def _delete_table() -> Any:
    return nft.message(nft_table_msg, nft.DELTABLE, nft.INET, [("NFTA_TABLE_NAME", TABLE)])


def ensure(netns: str | None, port: int, addresses: set[str]) -> None:
    """The table with exactly ``addresses`` allowed to send to UDP ``port``; made, fixed or adopted, each
    change one transaction."""
    allowed = _check(addresses)
    with _nftables(netns) as sock:
        try:
            messages = []
            if TABLE in _tables(sock):
                chains = nft.names(sock.get_chains(), "NFTA_CHAIN_NAME", "NFTA_CHAIN_TABLE", TABLE)
                rules = [r for r in sock.get_rules() if r.get_attr("NFTA_RULE_TABLE") == TABLE]
                if chains == {chain_name(port)} and len(rules) == 1:
                    present = _present(sock)
                    if allowed - present:
                        messages.append(_elements(nft.NEWSETELEM, allowed - present))
                    if present - allowed:
                        messages.append(_elements(nft.DELSETELEM, present - allowed))
                else:  # another port, or not ours as made: made anew, in the same transaction
                    messages = [_delete_table(), *_create(port, allowed)]
            else:
                messages = _create(port, allowed)
            if messages:
                nft.commit(sock, messages)
        except (NetlinkError, OSError) as exc:
            raise DataplaneError(
                f"nftables table {TABLE}: allow VXLAN from {len(allowed)} VTEPs: {exc}"
            ) from exc


def remove(netns: str | None) -> bool:
    """Delete the table; False if there was none."""
    with _nftables(netns) as sock:
        try:
            if TABLE not in _tables(sock):
                return False
            nft.commit(sock, [_delete_table()])
        except (NetlinkError, OSError) as exc:
            raise DataplaneError(f"nftables table {TABLE}: delete: {exc}") from exc
    return True


def allowed(netns: str | None) -> set[str] | None:
    """The addresses allowed now, or None without the table."""
    with _nftables(netns) as sock:
        try:
            return _present(sock) if TABLE in _tables(sock) else None
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
