"""The kernel datapath of pyoverlay: one bridge + VXLAN device per network, one veth per local endpoint,
remote endpoints as static FDB and permanent neighbour entries on the VXLAN device.

Every method is idempotent and safe to call from several threads: each thread gets its own IPRoute.
"""

import errno
import ipaddress
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ndmsg import NTF_SELF, NUD_NOARP, NUD_PERMANENT

from . import announce, firewall, peer_entries, port_security, sealed_filter, vtep_filter
from .errors import DataplaneError
from .links import (
    create_veth,
    delete_link,
    describe,
    ensure_bridge,
    ensure_host_address,
    ensure_host_port,
    ensure_veth,
    ensure_vxlan,
    find_link,
    host_label,
    kernel_op,
    require_link,
    veth_in_place,
)
from .names import (
    HOST_VETH_PREFIX,
    bridge_name,
    check_vni,
    endpoint_prefix_from_name,
    exposure_names,
    is_retired_veth,
    retired_veth_name,
    veth_names,
    vni_from_name,
    vxlan_name,
)
from .netns import DEFAULT_SCOPE, NETNS_DIR, ensure_netns, identity, network_netns, network_vnis, remove_netns
from .peers import PeerChanges, PeerState
from .reaper import Reaper
from .sockets import NetlinkSockets, PacketSockets, open_iproute

__all__ = ["Dataplane", "DataplaneError", "open_iproute"]

ANNOUNCE_AGAIN = (0.5, 2.0)  # seconds after the first announcement: neighbours that missed it, a veth moving
_FDB_FLAGS = NTF_SELF  # on the VXLAN device itself; without it the entry lands in the bridge's table
_FDB_STATE = NUD_PERMANENT | NUD_NOARP
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


@contextmanager
def _netns_fd(path: str | None) -> Iterator[int]:
    """An open descriptor of the namespace at path (None: this thread's)."""
    path = path or "/proc/thread-self/ns/net"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise DataplaneError(f"netns {path}: open: {describe(exc)}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


class Dataplane:
    """Kernel operations for one host (or one test namespace standing for a host).

    Each network lives in a namespace of its own (driver/netns.py): its bridge, its VXLAN device (whose UDP
    socket stays in the host's namespace) and the bridge ports of its endpoints' veths; the container
    sides are made in the host's namespace, where Docker picks them up.
    """

    def __init__(
        self,
        netns: str | None = None,
        announce_again: tuple[float, ...] = ANNOUNCE_AGAIN,
        netns_dir: str = NETNS_DIR,
    ) -> None:
        self.netns = netns  # the host's namespace (None: this process's)
        self.netns_dir = netns_dir
        self.scope = netns or DEFAULT_SCOPE  # networks' namespaces are <scope>-<vni>
        self.announce_again = announce_again
        self._sockets = NetlinkSockets()
        self._packets = PacketSockets()
        self._reaper = Reaper(self._delete_retired)
        self._repeater = announce.Repeater()
        # network-level changes (devices shared by all endpoints, namespaces) go one at a time
        self._network_lock = threading.Lock()
        self.vteps = vtep_filter.VtepFilter(None if netns is None else f"{NETNS_DIR}/{netns}")
        self.sealed = sealed_filter.SealedFilter(None if netns is None else f"{NETNS_DIR}/{netns}")

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def _host(self) -> IPRoute:
        return self._sockets.get(self.netns)

    def network_netns(self, vni: int) -> str:
        """The path of the network's namespace."""
        return network_netns(self.netns_dir, self.scope, vni)

    def _net(self, vni: int, operation: str) -> IPRoute:
        path = self.network_netns(vni)
        if identity(path) is None:
            raise DataplaneError(f"{bridge_name(vni)}: {operation}: device not found (no namespace {path})")
        return self._sockets.get(path, track_identity=True)

    def close(self) -> None:
        """Finish the deletions delete_endpoint deferred, then close the sockets of all threads; call once
        at shutdown (or at the end of a test)."""
        self._reaper.close()
        self._repeater.close()
        self._sockets.close()
        self._packets.close()

    def __enter__(self) -> "Dataplane":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- networks ---------------------------------------------------------------------------------

    def ensure_network(self, vni: int, mtu: int, local_ip: str, port: int = 4789) -> None:
        """The network's namespace, bridge and VXLAN device; adopts, fixes or recreates what exists."""
        check_vni(vni)
        try:
            local = str(ipaddress.ip_address(local_ip.strip()))  # compared with what the kernel reports
        except ValueError as exc:
            raise DataplaneError(f"{vxlan_name(vni)}: create vxlan: local {local_ip!r}: {exc}") from exc
        path = self.network_netns(vni)
        with self._network_lock:
            ensure_netns(path)
            net = self._net(vni, "create bridge")
            bridge = ensure_bridge(net, bridge_name(vni), mtu)
            with _netns_fd(path) as fd:
                self._move_in_from_host(vni, net, bridge, fd)
                ensure_vxlan(
                    net, vxlan_name(vni), vni, local, port, mtu, bridge, creator=self._host, netns_fd=fd
                )
            port_security.ensure_table(path)

    def _move_in_from_host(self, vni: int, net: IPRoute, bridge: Any, fd: int) -> None:
        """Take over a network built in the host's namespace (pyoverlay before network namespaces): its
        VXLAN device goes (freeing the VNI on the port), its endpoints' ports move to the new bridge."""
        host = self._host
        old_bridge = find_link(host, bridge_name(vni))
        if delete_link(host, vxlan_name(vni)) is False and old_bridge is None:
            return
        if old_bridge is not None:
            with kernel_op(bridge_name(vni), "list ports in the host's namespace"):
                ports = [link for link in host.link("dump") if link.get("master") == old_bridge["index"]]
            for port in ports:
                name = port.get("ifname")
                if not name.startswith(HOST_VETH_PREFIX):
                    continue
                with kernel_op(name, "move into the network's namespace"):
                    host.link("set", index=port["index"], net_ns_fd=fd)
                moved = require_link(net, name, "move into the network's namespace")
                with kernel_op(name, f"attach to bridge {bridge.get('ifname')}"):
                    net.link("set", index=moved["index"], master=bridge["index"], state="up")
            delete_link(host, bridge_name(vni))
        firewall.delete_forward_rules(vni, self.netns)

    def delete_network(self, vni: int) -> None:
        """Remove the network's namespace and devices (and the host's side of an exposure); nothing to do
        if they are gone."""
        check_vni(vni)
        path = self.network_netns(vni)
        with self._network_lock:
            host = self._host
            delete_link(host, exposure_names(vni)[0])  # its port on the bridge goes with it
            if find_link(host, bridge_name(vni)) is not None or delete_link(host, vxlan_name(vni)):
                delete_link(host, bridge_name(vni))  # built in the host's namespace, before namespaces
                firewall.delete_forward_rules(vni, self.netns)
            if identity(path) is None:
                return
            # explicitly, and now: a socket another thread still holds keeps the namespace alive (never
            # the VNI, the veths' container sides), and the kernel frees a namespace in the background
            net = self._net(vni, "delete network")
            for name in self._link_names(net):
                if name != "lo":
                    delete_link(net, name)
            self._sockets.drop(path)
            self._packets.drop(path)
            remove_netns(path)

    def ensure_host_address(self, vni: int, address: str | None, mac: str | None = None) -> None:
        """This host's own address on the network (pyoverlay expose): a veth from the host's namespace to
        the network's bridge whose host side holds exactly ``address`` (IPv4 CIDR) and has ``mac``.
        None: no such veth."""
        check_vni(vni)
        host_side, port = exposure_names(vni)
        if mac is not None and not _MAC.match(mac):
            raise DataplaneError(f"{host_side}: host address: invalid MAC address {mac!r}")
        with self._network_lock:
            if address is None:
                delete_link(self._host, host_side)
                return
            net = self._net(vni, "set host address (ensure the network)")
            bridge = require_link(net, bridge_name(vni), "set host address (ensure the network)")
            with _netns_fd(self.network_netns(vni)) as fd:
                link = ensure_host_port(net, self._host, host_side, port, bridge.get("mtu"), bridge, fd)
            ensure_host_address(self._host, link, address, mac)

    def host_address(self, vni: int) -> tuple[str, str] | None:
        """(address CIDR, MAC) of this host's own address on the network, or None."""
        host_side, _ = exposure_names(vni)
        link = find_link(self._host, host_side)
        if link is None:
            return None
        with kernel_op(host_side, "list addresses"):
            addresses = self._host.addr("dump", index=link["index"])
        for addr in addresses:
            if addr.get("IFA_LABEL") == host_label(host_side):
                return f"{addr.get('IFA_ADDRESS')}/{addr['prefixlen']}", link.get("address")
        return None

    def has_network(self, vni: int) -> bool:
        """Whether the network's bridge or VXLAN device exists here, as network_vnis() would say, looked
        up by name: a dump of every link costs in proportion to the host's links (~58 ms at 200)."""
        check_vni(vni)
        if identity(self.network_netns(vni)) is None:
            return False
        net = self._net(vni, "look up network")
        return any(find_link(net, name) is not None for name in (bridge_name(vni), vxlan_name(vni)))

    def network_vnis(self) -> set[int]:
        """VNIs that have a namespace here, or devices in the host's namespace (before namespaces)."""
        in_host = {vni for vni in map(vni_from_name, self._link_names(self._host)) if vni is not None}
        return network_vnis(self.netns_dir, self.scope) | in_host

    # -- endpoints --------------------------------------------------------------------------------

    def ensure_endpoint(
        self, vni: int, endpoint_id: str, mac: str, mtu: int, addresses: tuple[str, ...] = ()
    ) -> str:
        """A veth pair for a local endpoint on the network's bridge, its port locked to mac and addresses
        (driver/port_security.py); returns the container-side name."""
        port, container = veth_names(endpoint_id)
        operation = f"attach endpoint {port} (ensure the network)"
        net = self._net(vni, operation)
        bridge = require_link(net, bridge_name(vni), operation)
        # a new endpoint's pair in three requests; any other case (Docker resending, devices left
        # behind, a half-made pair) takes the full ensure
        with _netns_fd(None if self.netns is None else f"{NETNS_DIR}/{self.netns}") as host_fd:
            port_link = create_veth(net, port, container, mac, mtu, bridge, host_fd)
        if port_link is None or not veth_in_place(port_link, None, bridge, mac, mtu):
            with _netns_fd(self.network_netns(vni)) as fd:
                ensure_veth(net, self._host, port, container, mac, mtu, bridge, fd)
            port_link = require_link(net, port, "look up port")
        # the static FDB entry also moves the MAC off any port it was learned on (the same IP remote before)
        port_security.secure_port(net, self.network_netns(vni), port_link, bridge, mac, addresses)
        return container

    def join_endpoint(
        self, vni: int, endpoint_id: str, mac: str, mtu: int, addresses: tuple[str, ...] = ()
    ) -> str:
        """ensure_endpoint for Join, which follows CreateEndpoint's ensure_endpoint: three lookups confirm
        the pair is as that left it; anything else (devices gone or changed since) gets the full ensure."""
        port, container = veth_names(endpoint_id)
        net = self._net(vni, f"attach endpoint {port} (ensure the network)")
        bridge = find_link(net, bridge_name(vni))
        port_link = find_link(net, port) if bridge is not None else None
        if bridge is not None and port_link is not None:
            peer = find_link(self._host, container)
            if veth_in_place(port_link, peer, bridge, mac, mtu):
                return container
        return self.ensure_endpoint(vni, endpoint_id, mac, mtu, addresses)

    def delete_endpoint(self, endpoint_id: str, vni: int | None = None) -> None:
        """Remove an endpoint's veth pair; without vni, every network's namespace is searched. At once, the
        port leaves the bridge, goes down and gives up the endpoint's name (the bridge forgets its MACs
        with the port, so a new endpoint with the same address and MAC never meets it); the kernel's slow
        deletion of the pair (~20 ms; deleting one side removes the other, wherever it is) follows on the
        reaper's thread."""
        port, container = veth_names(endpoint_id)
        for candidate in [vni] if vni is not None else sorted(self.network_vnis()):
            path = self.network_netns(candidate)
            if identity(path) is None:
                continue
            net = self._net(candidate, "delete endpoint")
            link = find_link(net, port)
            if link is not None:
                self._retire(path, net, port, link)
                return
        if not delete_link(self._host, port):  # a port made before networks had namespaces
            delete_link(self._host, container)  # a stray half: with the port went its peer

    def _retire(self, path: str, net: IPRoute, port: str, link: Any) -> None:
        retired = retired_veth_name(link["index"])
        try:
            with kernel_op(port, "detach and set down", tolerate=(errno.ENODEV,)):
                net.link("set", index=link["index"], master=0, state="down")
            with kernel_op(port, f"rename to {retired}", tolerate=(errno.ENODEV,)):
                net.link("set", index=link["index"], ifname=retired)  # a name change needs it down
        except DataplaneError:
            delete_link(net, port)  # could not retire it: delete it here, as before
            port_security.release_port(path, port)
            return
        self._reaper.put((path, retired, port))

    def _delete_retired(self, item: Any) -> None:
        path, name, port = item
        if identity(path) is not None:  # else: it went with its network's namespace
            port_security.release_port(path, port)  # off the request: deleting rules waits for RCU
            delete_link(self._sockets.get(path, track_identity=True), name)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until the deletions delete_endpoint deferred so far are done; False on timeout."""
        return self._reaper.settle(timeout)

    def delete_retired_veths(self) -> list[str]:
        """Delete every retired veth in the networks' namespaces now (the agent stopped before its reaper
        got to them); returns their names."""
        deleted = []
        for vni in network_vnis(self.netns_dir, self.scope):
            try:
                net = self._net(vni, "list retired veths")
            except DataplaneError:
                continue  # removed meanwhile
            for name in filter(is_retired_veth, self._link_names(net)):
                delete_link(net, name)
                deleted.append(name)
        return deleted

    def announce(self, vni: int, ip: str, mac: str) -> None:
        """Announce ip at mac on the network's bridge (a gratuitous ARP, or for IPv6 an unsolicited
        neighbour advertisement), now and a few times more shortly after: neighbours on this host that
        cached another MAC for ip update their entry."""
        ifname = bridge_name(vni)
        try:
            frame = announce.announcement(ip, mac)
        except ValueError as exc:
            raise DataplaneError(f"{ifname}: announce {ip} at {mac}: {exc}") from exc
        path = self.network_netns(vni)

        def send() -> None:
            try:
                self._packets.send(path, ifname, frame)
            except Exception as exc:  # pyroute2's namespace helper raises its own types too
                raise DataplaneError(f"{ifname}: announce {ip} at {mac}: {describe(exc)}") from exc

        send()  # a missing bridge: ENODEV; a missing namespace: the helper's error
        self._repeater.send_later(send, ifname, self.announce_again, key=(ifname, ip))

    def endpoint_ids_prefixes(self) -> set[str]:
        """The 12-character endpoint ID prefixes of the endpoints' bridge ports that exist here."""
        names = self._link_names(self._host)
        for vni in network_vnis(self.netns_dir, self.scope):
            try:
                names += self._link_names(self._net(vni, "list ports"))
            except DataplaneError:
                continue  # removed meanwhile
        return {p for p in map(endpoint_prefix_from_name, names) if p is not None}

    def loose_endpoint_ids_prefixes(self) -> set[str]:
        """The prefixes of endpoints whose container side is in the host's namespace: not (or no longer)
        in a container. Docker moves it into the container at Join and back when the sandbox goes."""
        names = self._link_names(self._host)
        return {p for p in (endpoint_prefix_from_name(n, side="container") for n in names) if p is not None}

    def _link_names(self, ipr: IPRoute) -> list[str]:
        with kernel_op(f"netns {self.netns or '(current)'}", "list links"):
            return [link.get("ifname") for link in ipr.link("dump")]
        return []

    # -- remote peers (the event loop is the only caller) ----------------------------------------

    def read_peers(self, vni: int) -> PeerState:
        """The remote FDB and permanent neighbour entries programmed on the network's VXLAN device."""
        ifname = vxlan_name(vni)
        net = self._net(vni, "read peers")
        return peer_entries.read_entries(net, ifname, require_link(net, ifname, "read peers")["index"])

    def secure_endpoints(self, vni: int, endpoints: dict[str, tuple[str, tuple[str, ...]]]) -> list[str]:
        """Port security where it is missing for these local endpoints (id -> (MAC, addresses)), and none
        left for ports that went (port_security.reconcile); one message per failure."""
        net = self._net(vni, "secure ports")
        ports = {veth_names(endpoint_id)[0]: value for endpoint_id, value in endpoints.items()}
        bridge = require_link(net, bridge_name(vni), "secure ports")
        return port_security.reconcile(net, self.network_netns(vni), bridge, ports)

    def apply_peers(self, vni: int, changes: PeerChanges) -> list[str]:
        """Apply changes to the network's VXLAN device; returns one message per entry that failed."""
        ifname = vxlan_name(vni)
        try:
            net = self._net(vni, "apply peers")
            link = find_link(net, ifname)
        except DataplaneError:
            link = None
        if link is None:
            return [f"{ifname}: apply peers: device not found"] if changes else []
        return peer_entries.apply_changes(net, ifname, link["index"], changes)
