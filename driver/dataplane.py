"""The kernel datapath of pyoverlay: one bridge + VXLAN device per network, one veth per local endpoint,
remote endpoints as static FDB and permanent neighbour entries on the VXLAN device.

Every method is idempotent and safe to call from several threads: each thread gets its own IPRoute.
"""

import errno
import ipaddress
import os
import re
import socket
import threading
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NTF_SELF, NUD_NOARP, NUD_PERMANENT

from . import announce, firewall
from .errors import DataplaneError
from .links import (
    create_veth,
    delete_link,
    describe,
    ensure_bridge,
    ensure_host_address,
    ensure_veth,
    ensure_vxlan,
    find_link,
    host_label,
    kernel_op,
    require_link,
    veth_in_place,
)
from .names import (
    bridge_name,
    check_vni,
    endpoint_prefix_from_name,
    is_retired_veth,
    retired_veth_name,
    veth_names,
    vni_from_name,
    vxlan_name,
)
from .peers import FLOOD_MAC, PeerChanges, PeerState, normalize_mac
from .reaper import Reaper

__all__ = ["Dataplane", "DataplaneError"]

SOCKET_USES = 500  # accesses of a thread's IPRoute before it is replaced
ANNOUNCE_AGAIN = (0.5, 2.0)  # seconds after the first announcement: neighbours that missed it, a veth moving
_FDB_FLAGS = NTF_SELF  # on the VXLAN device itself; without it the entry lands in the bridge's table
_FDB_STATE = NUD_PERMANENT | NUD_NOARP
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def open_iproute(netns: str | None) -> IPRoute:
    """A new IPRoute in netns (None: the current one) that subscribes to no events.

    Subscribed sockets queue every broadcast the kernel sends; a long-lived agent never reads them.
    flags=0: pyroute2 would otherwise create a missing namespace instead of failing.
    """
    try:
        if netns is None:
            return IPRoute(groups=0)
        return IPRoute(netns=netns, flags=0, groups=0)
    except OSError as exc:
        raise DataplaneError(f"netns {netns or '(current)'}: open netlink socket: {describe(exc)}") from exc


class Dataplane:
    """Kernel operations for one host (or one test namespace)."""

    def __init__(self, netns: str | None = None, announce_again: tuple[float, ...] = ANNOUNCE_AGAIN) -> None:
        self.netns = netns
        self.announce_again = announce_again
        self._local = threading.local()
        self._sockets: list[tuple[int, IPRoute]] = []
        self._sockets_lock = threading.Lock()
        # network-level changes (devices shared by all endpoints, firewall rules) go one at a time
        self._network_lock = threading.Lock()
        self._reaper = Reaper(lambda ifname: delete_link(self._ipr, ifname))
        self._frames = announce.FrameSender(netns)

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def _ipr(self) -> IPRoute:
        local = self._local
        ipr = getattr(local, "ipr", None)
        local.uses = getattr(local, "uses", 0) + 1
        if ipr is not None and local.pid == os.getpid() and local.uses > SOCKET_USES:
            # pyroute2 0.9's IPRoute keeps the ACK of every link("get") queued until the socket closes
            # (find_link; one page each under the agent's pinned mmap threshold): this bounds them
            with self._sockets_lock:
                self._sockets.remove((local.pid, ipr))
            ipr.close()
            ipr = None
        # a socket inherited across fork belongs to the parent: never reuse it
        if ipr is None or local.pid != os.getpid():
            ipr = open_iproute(self.netns)
            local.ipr, local.pid, local.uses = ipr, os.getpid(), 0
            with self._sockets_lock:
                self._sockets.append((os.getpid(), ipr))
        return ipr

    def close(self) -> None:
        """Finish the deletions delete_endpoint deferred, then close the netlink sockets of all threads;
        call once at shutdown (or at the end of a test)."""
        self._reaper.close()
        self._frames.close()
        with self._sockets_lock:
            sockets, self._sockets = self._sockets, []
        for pid, ipr in sockets:
            if pid == os.getpid():
                ipr.close()
        self._local = threading.local()

    def __enter__(self) -> "Dataplane":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- networks ---------------------------------------------------------------------------------

    def ensure_network(self, vni: int, mtu: int, local_ip: str, port: int = 4789) -> None:
        """Bridge + VXLAN device + FORWARD rule for a network; adopts, fixes or recreates what exists."""
        check_vni(vni)
        try:
            local = str(ipaddress.IPv4Address(local_ip.strip()))  # compared with what the kernel reports
        except ValueError as exc:
            raise DataplaneError(f"{vxlan_name(vni)}: create vxlan: local {local_ip!r} is not IPv4") from exc
        with self._network_lock:
            bridge = ensure_bridge(self._ipr, bridge_name(vni), mtu)
            ensure_vxlan(self._ipr, vxlan_name(vni), vni, local, port, mtu, bridge)
            firewall.ensure_forward_rule(vni, self.netns)

    def delete_network(self, vni: int) -> None:
        """Remove the network's VXLAN device, bridge and FORWARD rules; nothing to do if they are gone."""
        check_vni(vni)
        with self._network_lock:
            delete_link(self._ipr, vxlan_name(vni))
            delete_link(self._ipr, bridge_name(vni))
            firewall.delete_forward_rules(vni, self.netns)

    def ensure_host_address(self, vni: int, address: str | None, mac: str | None = None) -> None:
        """This host's own address on the network (pyoverlay expose): the bridge holds exactly
        ``address`` (IPv4 CIDR) and has ``mac``. None: no address, and the bridge takes its VXLAN
        device's MAC again, so the exposed address's MAC never shadows a container given it later."""
        check_vni(vni)
        ifname = bridge_name(vni)
        if mac is not None and not _MAC.match(mac):
            raise DataplaneError(f"{ifname}: host address: invalid MAC address {mac!r}")
        with self._network_lock:
            bridge = require_link(self._ipr, ifname, "set host address (ensure the network)")
            if address is None:
                vxlan = find_link(self._ipr, vxlan_name(vni))
                mac = vxlan.get("address") if vxlan is not None else None
            ensure_host_address(self._ipr, bridge, address, mac)

    def host_address(self, vni: int) -> tuple[str, str] | None:
        """(address CIDR, bridge MAC) of this host's own address on the network, or None."""
        ifname = bridge_name(vni)
        bridge = require_link(self._ipr, ifname, "read host address")
        with kernel_op(ifname, "list addresses"):
            addresses = self._ipr.addr("dump", index=bridge["index"])
        for addr in addresses:
            if addr.get("IFA_LABEL") == host_label(ifname):
                return f"{addr.get('IFA_ADDRESS')}/{addr['prefixlen']}", bridge.get("address")
        return None

    def has_network(self, vni: int) -> bool:
        """Whether the network's bridge or VXLAN device exists here, as network_vnis() would say, looked
        up by name: a dump of every link costs in proportion to the host's links (~58 ms at 200)."""
        check_vni(vni)
        return any(find_link(self._ipr, name) is not None for name in (bridge_name(vni), vxlan_name(vni)))

    def network_vnis(self) -> set[int]:
        """VNIs that have a pyoverlay bridge or VXLAN device here."""
        return {vni for vni in map(vni_from_name, self._link_names()) if vni is not None}

    # -- endpoints --------------------------------------------------------------------------------

    def ensure_endpoint(self, vni: int, endpoint_id: str, mac: str, mtu: int) -> str:
        """A veth pair for a local endpoint on the network's bridge; returns the container-side name."""
        host, container = veth_names(endpoint_id)
        bridge = require_link(self._ipr, bridge_name(vni), f"attach endpoint {host} (ensure the network)")
        # a new endpoint's pair in three requests; any other case (Docker resending, devices left
        # behind, a half-made pair) takes the full ensure
        host_link = create_veth(self._ipr, host, container, mac, mtu, bridge)
        if host_link is None or not veth_in_place(host_link, None, bridge, mac, mtu):
            ensure_veth(self._ipr, host, container, mac, mtu, bridge)
            host_link = require_link(self._ipr, host, "look up port")
        self._forget_learned(bridge, mac, host_link["index"])
        return container

    def join_endpoint(self, vni: int, endpoint_id: str, mac: str, mtu: int) -> str:
        """ensure_endpoint for Join, which follows CreateEndpoint's ensure_endpoint: three lookups confirm
        the pair is as that left it; anything else (devices gone or changed since) gets the full ensure."""
        host, container = veth_names(endpoint_id)
        bridge = find_link(self._ipr, bridge_name(vni))
        host_link = find_link(self._ipr, host) if bridge is not None else None
        if bridge is not None and host_link is not None:
            peer = find_link(self._ipr, container)
            if veth_in_place(host_link, peer, bridge, mac, mtu):
                return container
        return self.ensure_endpoint(vni, endpoint_id, mac, mtu)

    def _forget_learned(self, bridge: Any, mac: str, port: int) -> None:
        """Drop what the bridge learned of mac on another port: a MAC that was remote (the same IP on
        another host, announced or seen through the VXLAN port) would keep black-holing the new local
        endpoint until it ages out. Unknown, the bridge floods frames for it until it learns the port."""
        ifname = bridge.get("ifname")
        with kernel_op(ifname, "dump fdb"):
            entries = self._ipr.fdb("dump", master=bridge["index"])
        for entry in entries:
            if (
                normalize_mac(entry.get("NDA_LLADDR") or "") == normalize_mac(mac)
                and entry["ifindex"] != port
                and not entry.get("NDA_DST")
                and not entry["state"] & (NUD_PERMANENT | NUD_NOARP)
            ):
                with kernel_op(ifname, f"forget {mac} learned elsewhere", tolerate=(errno.ENOENT,)):
                    self._ipr.fdb("del", ifindex=entry["ifindex"], lladdr=mac, flags=NTF_MASTER)

    def delete_endpoint(self, endpoint_id: str) -> None:
        """Remove an endpoint's veth pair. At once, the host side leaves the bridge, goes down and gives
        up the endpoint's name (the bridge forgets its MACs with the port, so a new endpoint with the
        same address and MAC never meets it); the kernel's slow deletion of the pair (~20 ms, deleting
        one side removes the other, wherever it is) follows on the reaper's thread."""
        host, container = veth_names(endpoint_id)
        link = find_link(self._ipr, host)
        if link is None:
            delete_link(self._ipr, container)  # a stray half: with the host side went its peer
            return
        retired = retired_veth_name(link["index"])
        try:
            with kernel_op(host, "detach and set down", tolerate=(errno.ENODEV,)):
                self._ipr.link("set", index=link["index"], master=0, state="down")
            with kernel_op(host, f"rename to {retired}", tolerate=(errno.ENODEV,)):
                self._ipr.link("set", index=link["index"], ifname=retired)  # a name change needs it down
        except DataplaneError:
            delete_link(self._ipr, host)  # could not retire it: delete it here, as before
            return
        self._reaper.put(retired)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until the deletions delete_endpoint deferred so far are done; False on timeout."""
        return self._reaper.settle(timeout)

    def delete_retired_veths(self) -> list[str]:
        """Delete every retired veth in the namespace now (the agent stopped before its reaper got to
        them); returns their names."""
        retired = [name for name in self._link_names() if is_retired_veth(name)]
        for name in retired:
            delete_link(self._ipr, name)
        return retired

    def announce(self, vni: int, ip: str, mac: str) -> None:
        """Broadcast a gratuitous ARP (ip is at mac) on the network's bridge, now and a few times more
        shortly after: neighbours on this host that cached another MAC for ip update their entry."""
        ifname = bridge_name(vni)
        with kernel_op(ifname, f"announce {ip} at {mac}"):  # a missing bridge: ENODEV from the bind
            frame = announce.garp_frame(ip, mac)
            self._frames.send(ifname, frame)
        self._frames.send_later(ifname, frame, self.announce_again)

    def endpoint_ids_prefixes(self) -> set[str]:
        """The 12-character endpoint ID prefixes of the host-side veths that exist here."""
        return {p for p in map(endpoint_prefix_from_name, self._link_names()) if p is not None}

    def _link_names(self) -> list[str]:
        with kernel_op(f"netns {self.netns or '(current)'}", "list links"):
            return [link.get("ifname") for link in self._ipr.link("dump")]
        return []

    # -- remote peers (the event loop is the only caller) ----------------------------------------

    def read_peers(self, vni: int) -> PeerState:
        """The remote FDB and permanent neighbour entries programmed on the network's VXLAN device."""
        ifname = vxlan_name(vni)
        index = require_link(self._ipr, ifname, "read peers")["index"]
        with kernel_op(ifname, "dump fdb"):
            fdb_entries = self._ipr.fdb("dump", ifindex=index)
        with kernel_op(ifname, "dump neighbours"):
            neigh_entries = self._ipr.neigh("dump", ifindex=index)
        return PeerState(
            fdb=frozenset(_remote_fdb(fdb_entries, index)),
            neigh=frozenset(_permanent_neigh(neigh_entries, index)),
        )

    def apply_peers(self, vni: int, changes: PeerChanges) -> list[str]:
        """Apply changes to the network's VXLAN device; returns one message per entry that failed.

        Removals go first so a MAC or IP that moved is never left pointing at the old place.
        """
        ifname = vxlan_name(vni)
        link = find_link(self._ipr, ifname)
        if link is None:
            return [f"{ifname}: apply peers: device not found"] if changes else []
        index = link["index"]
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
            attempt(f"delete neighbour {ip} lladdr {mac}", errno.ENOENT, self._neigh, "del", index, ip, mac)
        for mac, vtep in sorted(changes.del_fdb):
            attempt(f"delete fdb {mac} dst {vtep}", errno.ENOENT, self._fdb, "del", index, mac, vtep)
        for mac, vtep in sorted(changes.add_fdb):
            # several all-zeros entries must coexist (one per remote VTEP): append; a unicast MAC
            # has one destination: replace, so a MAC that moved host is updated in place
            command = "append" if normalize_mac(mac) == FLOOD_MAC else "replace"
            attempt(f"add fdb {mac} dst {vtep}", errno.EEXIST, self._fdb, command, index, mac, vtep)
        for ip, mac in sorted(changes.add_neigh):
            attempt(f"add neighbour {ip} lladdr {mac}", 0, self._neigh, "replace", index, ip, mac)
        return errors

    def _fdb(self, command: str, index: int, mac: str, vtep: str) -> None:
        _check_entry(mac, vtep)
        # flags and state explicit: 'replace' would otherwise put the entry in the bridge's table
        self._ipr.fdb(command, ifindex=index, lladdr=mac, dst=vtep, flags=_FDB_FLAGS, state=_FDB_STATE)

    def _neigh(self, command: str, index: int, ip: str, mac: str) -> None:
        _check_entry(mac, ip)
        self._ipr.neigh(command, ifindex=index, dst=ip, lladdr=mac, state=NUD_PERMANENT)


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
