"""Only member hosts may inject into an encrypted network: an nftables table in the host's namespace
drops VXLAN over IPv6 (encrypted networks' devices send from tunnel addresses) that did not come out of
the tunnel device, or whose source tunnel address is not a member host of the VNI it names.

    table ip6 pyoverlay {
        set members { type ipv6_addr . vni (20 bytes: address, VNI, padding); elements = { ... } }
        chain vxlan6-in-<port> {
            type filter hook input priority raw; policy accept;
            udp dport <port> iifname != "<tunnel device>" counter drop
            udp dport <port> ip6 saddr . vxlan vni != @members counter drop
        }
    }

WireGuard already refuses anything not sealed with a peer's key and checks a peer's source address
against its allowed IPs; this adds the per-network rule: a peer that shares one encrypted network with
this host cannot inject into another. The table is replaced whole, in one transaction, when membership
changes (rare; never frame by frame), and goes with the last encrypted network here.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from . import nft
from .errors import DataplaneError

TABLE = "pyoverlay"
SET = "members"
CHAIN_PREFIX = "vxlan6-in-"
KEY_LEN = 20  # IPv6 source (16) . VNI (3), padded to a register
_PRIORITY_RAW = -300
_F = nft.INET6
_VNI_OFFSET = 12  # in the transport header: UDP 8 + VXLAN flags 1 + reserved 3


def _udp_to(port: int) -> bytes:
    return (
        nft.meta(nft.META_L4PROTO)
        + nft.cmp(bytes([socket.IPPROTO_UDP]))
        + nft.match(nft.TRANSPORT, 2, struct.pack("!H", port))
    )


def _rules(port: int, device: str) -> list[bytes]:
    outside = _udp_to(port) + nft.meta(nft.META_IIFNAME) + nft.cmp(nft.ifname(device), equal=False)
    stranger = b"".join((
        _udp_to(port),
        nft.payload(nft.NETWORK, 8, 16),
        nft.payload(nft.TRANSPORT, _VNI_OFFSET, 3, dreg=nft.REG32_04),
        nft.lookup(SET, inverted=True),
    ))  # fmt: skip
    return [outside + nft.counter() + nft.verdict(nft.DROP), stranger + nft.counter() + nft.verdict(nft.DROP)]


def member_key(address: str, vni: int) -> bytes:
    return ipaddress.IPv6Address(address).packed + vni.to_bytes(3, "big") + b"\0"


def _tables(netns: str | None) -> set[str]:
    with nft.nftables(netns, _F, f"nftables table ip6 {TABLE}") as sock:
        return {m.get_attr("NFTA_TABLE_NAME") for m in sock.get_tables()}


def ensure(netns: str | None, port: int, device: str, members: Iterable[tuple[str, int]]) -> None:
    """The table with exactly these (tunnel address, VNI) members, made anew in one transaction."""
    try:
        keys = sorted({member_key(a, v) for a, v in members})
    except ValueError as exc:
        raise DataplaneError(f"nftables table ip6 {TABLE}: {exc}") from exc
    chain = f"{CHAIN_PREFIX}{port}"
    try:
        messages = [nft.delete_table(_F, TABLE)] if TABLE in _tables(netns) else []
        messages += [
            nft.table(_F, TABLE),
            nft.new_set(_F, TABLE, SET, 0, KEY_LEN),
            *([nft.elements(_F, TABLE, SET, keys)] if keys else []),
            nft.chain(_F, TABLE, chain, hook=(nft.HOOK_INPUT, _PRIORITY_RAW)),
            *(nft.rule(_F, TABLE, chain, r) for r in _rules(port, device)),
        ]
        nft.commit(netns, messages)
    except (NetlinkError, OSError) as exc:
        raise DataplaneError(f"nftables table ip6 {TABLE}: {len(keys)} members: {exc}") from exc


def remove(netns: str | None) -> bool:
    """Delete the table; False if there was none."""
    try:
        if TABLE not in _tables(netns):
            return False
        nft.commit(netns, [nft.delete_table(_F, TABLE)])
    except (NetlinkError, OSError) as exc:
        raise DataplaneError(f"nftables table ip6 {TABLE}: delete: {exc}") from exc
    return True


class SealedFilter:
    """The filter of one host's namespace (path; None: this process's), as Dataplane.sealed."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns

    def allow(self, members: set[tuple[str, int]], port: int, device: str) -> None:
        ensure(self.netns, port, device, members)

    def remove(self) -> bool:
        return remove(self.netns)

    def present(self) -> Any:
        return TABLE in _tables(self.netns)
