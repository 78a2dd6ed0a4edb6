"""The remote peers on a network's VXLAN device: static FDB entries (MAC -> remote VTEP, all-zeros ->
every remote VTEP) and permanent neighbour entries (IP -> MAC), read back and changed; the event loop's
single writer (driver/peers.py holds the pure diff)."""

import errno
import ipaddress
import re
import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_SELF, NUD_NOARP, NUD_PERMANENT

from .links import describe, kernel_op
from .peers import FLOOD_MAC, PeerChanges, PeerState, normalize_mac

_FDB_FLAGS = NTF_SELF  # on the VXLAN device itself; without it the entry lands in the bridge's table
_FDB_STATE = NUD_PERMANENT | NUD_NOARP
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def read_entries(net: IPRoute, ifname: str, index: int) -> PeerState:
    """The remote entries programmed on the VXLAN device (ifname, index) in net's namespace."""
    with kernel_op(ifname, "dump fdb"):
        fdb_entries = net.fdb("dump", ifindex=index)
    with kernel_op(ifname, "dump neighbours"):
        neigh_entries = net.neigh("dump", ifindex=index)
    return PeerState(
        fdb=frozenset(_remote_fdb(fdb_entries, index)),
        neigh=frozenset(_permanent_neigh(neigh_entries, index)),
    )


def apply_changes(net: IPRoute, ifname: str, index: int, changes: PeerChanges) -> list[str]:
    """Apply changes to the VXLAN device; returns one message per entry that failed.

    Removals go first so a MAC or IP that moved is never left pointing at the old place.
    """
    errors: list[str] = []
    replaced_ips = {ip for ip, _ in changes.add_neigh}

    def attempt(operation: str, tolerate: int, call: Any, *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except NetlinkError as exc:
            if exc.code != tolerate:
                errors.append(f"{ifname}: {operation}: {describe(exc)}")
        except Exception as exc:  # a malformed entry must not stop the others
            errors.append(f"{ifname}: {operation}: {describe(exc)}")

    for ip, mac in sorted(changes.del_neigh):
        if ip in replaced_ips:
            continue  # 'replace' below moves it in one step; deleting first would open a gap
        attempt(f"delete neighbour {ip} lladdr {mac}", errno.ENOENT, _neigh, net, "del", index, ip, mac)
    for mac, vtep in sorted(changes.del_fdb):
        attempt(f"delete fdb {mac} dst {vtep}", errno.ENOENT, _fdb, net, "del", index, mac, vtep)
    for mac, vtep in sorted(changes.add_fdb):
        # several all-zeros entries must coexist (one per remote VTEP): append; a unicast MAC
        # has one destination: replace, so a MAC that moved host is updated in place
        command = "append" if normalize_mac(mac) == FLOOD_MAC else "replace"
        attempt(f"add fdb {mac} dst {vtep}", errno.EEXIST, _fdb, net, command, index, mac, vtep)
    for ip, mac in sorted(changes.add_neigh):
        attempt(f"add neighbour {ip} lladdr {mac}", 0, _neigh, net, "replace", index, ip, mac)
    return errors


def _fdb(net: IPRoute, command: str, index: int, mac: str, vtep: str) -> None:
    _check_entry(mac, vtep)
    # flags and state explicit: 'replace' would otherwise put the entry in the bridge's table
    net.fdb(command, ifindex=index, lladdr=mac, dst=vtep, flags=_FDB_FLAGS, state=_FDB_STATE)


def _neigh(net: IPRoute, command: str, index: int, ip: str, mac: str) -> None:
    _check_entry(mac, ip)
    net.neigh(command, ifindex=index, dst=ip, lladdr=mac, state=NUD_PERMANENT)


def _check_entry(mac: str, address: str) -> None:
    # pyroute2's own messages for malformed values are misleading ("illegal IP" for a bad MAC)
    if not _MAC.match(mac):
        raise ValueError(f"invalid MAC address {mac!r}")
    ipaddress.ip_address(address)  # ValueError names the address


def _remote_fdb(entries: Any, index: int) -> set[tuple[str, str]]:
    # bridge-local entries (the device's own MAC, multicast) have no NTF_SELF or no destination
    return {
        (normalize_mac(entry.get("NDA_LLADDR")), entry.get("NDA_DST"))
        for entry in entries
        if entry["ifindex"] == index
        and entry["flags"] & NTF_SELF
        and entry.get("NDA_DST")
        and entry.get("NDA_LLADDR")
    }


def _permanent_neigh(entries: Any, index: int) -> set[tuple[str, str]]:
    return {
        (entry.get("NDA_DST"), normalize_mac(entry.get("NDA_LLADDR")))
        for entry in entries
        if entry["ifindex"] == index
        and entry["family"] in (socket.AF_INET, socket.AF_INET6)
        and entry["state"] & NUD_PERMANENT
        and entry.get("NDA_DST")
        and entry.get("NDA_LLADDR")
    }
