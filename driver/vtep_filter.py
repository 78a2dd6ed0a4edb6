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
from pyroute2.nftables.main import NFTSet

from . import nft
from .errors import DataplaneError

TABLE = "pyoverlay"
SET = "vteps"
CHAIN_PREFIX = "vxlan-in-"  # + the port: a changed VXLAN_PORT setting makes a new chain
_PRIORITY_RAW = -300
_F = nft.INET


def chain_name(port: int) -> str:
    return f"{CHAIN_PREFIX}{port}"


def _rule(port: int) -> bytes:
    """udp dport <port> ip saddr != @vteps counter drop"""
    return b"".join((
        nft.meta(nft.META_L4PROTO), nft.cmp(bytes([socket.IPPROTO_UDP])),
        nft.match(nft.TRANSPORT, 2, struct.pack("!H", port)),
        nft.payload(nft.NETWORK, 12, 4), nft.lookup(SET, inverted=True),
        nft.counter(), nft.verdict(nft.DROP),
    ))  # fmt: skip


def _elements(addresses: set[str], add: bool) -> nft.Message:
    return nft.elements(_F, TABLE, SET, [socket.inet_aton(a) for a in sorted(addresses)], add=add)


def _create(port: int, allowed: set[str]) -> list[nft.Message]:
    """The whole table in one transaction: never a rule without its set, or a set without its elements."""
    return [
        nft.table(_F, TABLE),
        nft.new_set(_F, TABLE, SET, nft.TYPE_IPV4_ADDR, 4),
        *([_elements(allowed, add=True)] if allowed else []),
        nft.chain(_F, TABLE, chain_name(port), hook=(nft.HOOK_INPUT, _PRIORITY_RAW)),
        nft.rule(_F, TABLE, chain_name(port), _rule(port)),
    ]


def _check(addresses: set[str]) -> set[str]:
    try:
        return {str(ipaddress.IPv4Address(a)) for a in addresses}
    except ValueError as exc:
        raise DataplaneError(f"nftables set {TABLE} {SET}: {exc}") from exc


def _tables(sock: Any) -> set[str]:
    return {m.get_attr("NFTA_TABLE_NAME") for m in sock.get_tables()}


def _present(sock: Any) -> set[str]:
    return {e.value for e in sock.set_elems("get", set=NFTSet(table=TABLE, name=SET, key_type="ipv4_addr"))}


def _reader(netns: str | None) -> Any:
    return nft.nftables(netns, _F, f"nftables table {TABLE}")


def ensure(netns: str | None, port: int, addresses: set[str]) -> None:
    """The table with exactly ``addresses`` allowed to send to UDP ``port``; made, fixed or adopted, each
    change one transaction."""
    allowed = _check(addresses)
    try:
        with _reader(netns) as sock:
            messages = []
            if TABLE in _tables(sock):
                chains = {m.get_attr("NFTA_CHAIN_NAME") for m in sock.get_chains()
                          if m.get_attr("NFTA_CHAIN_TABLE") == TABLE}  # fmt: skip
                rules = [r for r in sock.get_rules() if r.get_attr("NFTA_RULE_TABLE") == TABLE]
                if chains == {chain_name(port)} and len(rules) == 1:
                    present = _present(sock)
                    if allowed - present:
                        messages.append(_elements(allowed - present, add=True))
                    if present - allowed:
                        messages.append(_elements(present - allowed, add=False))
                else:  # another port, or not ours as made: made anew, in the same transaction
                    messages = [nft.delete_table(_F, TABLE), *_create(port, allowed)]
            else:
                messages = _create(port, allowed)
        nft.commit(netns, messages)
    except (NetlinkError, OSError) as exc:
        raise DataplaneError(f"nftables table {TABLE}: allow VXLAN from {len(allowed)} VTEPs: {exc}") from exc


def remove(netns: str | None) -> bool:
    """Delete the table; False if there was none."""
    try:
        with _reader(netns) as sock:
            if TABLE not in _tables(sock):
                return False
        nft.commit(netns, [nft.delete_table(_F, TABLE)])
    except (NetlinkError, OSError) as exc:
        raise DataplaneError(f"nftables table {TABLE}: delete: {exc}") from exc
    return True


def allowed(netns: str | None) -> set[str] | None:
    """The addresses allowed now, or None without the table."""
    try:
        with _reader(netns) as sock:
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
