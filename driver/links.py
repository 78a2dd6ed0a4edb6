"""Idempotent link helpers: create, tolerate "exists", re-read, check kind and settings, fix or fail.

Every function takes the caller's IPRoute (one per thread) and raises DataplaneError naming the device.
"""

import errno
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import NetlinkRequest
from pyroute2.netlink.rtnl import RTM_GETLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from .errors import DataplaneError

Link = Any  # a pyroute2 ifinfmsg; pyroute2 ships no type information
IN6_ADDR_GEN_MODE_NONE = 1
# A link "get" without NLM_F_ACK: pyroute2 0.9 asks for an ACK, returns on the reply and leaves the ACK
# queued on the socket until it closes (one page each under the agent's pinned mmap threshold: the
# worker grew by one page per lookup). The kernel answers an error without being asked all the same.
NetlinkRequest.flags.setdefault("get-noack", NLM_F_REQUEST)
_GET_NO_ACK = {"get": (RTM_GETLINK, "get-noack")}
_NO_ADDR_GEN = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE]]}]]}


def describe(exc: BaseException) -> str:
    """Short text for an error from pyroute2 or the kernel."""
    if isinstance(exc, NetlinkError):
        return f"[errno {exc.code}] {os.strerror(exc.code)}"
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def kernel_op(ifname: str, operation: str, tolerate: tuple[int, ...] = ()) -> Iterator[None]:
    """Turn a netlink error into DataplaneError("<ifname>: <operation>: ..."), ignoring tolerated errnos."""
    try:
        yield
    except NetlinkError as exc:
        if exc.code in tolerate:
            return
        raise DataplaneError(f"{ifname}: {operation}: {describe(exc)}") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise DataplaneError(f"{ifname}: {operation}: {describe(exc)}") from exc


def find_link(ipr: IPRoute, ifname: str) -> Link | None:
    """The link called ifname, or None."""
    with kernel_op(ifname, "look up link", tolerate=(errno.ENODEV,)):
        return ipr.link("get", ifname=ifname, command_map=_GET_NO_ACK)[0]
    return None


def require_link(ipr: IPRoute, ifname: str, operation: str) -> Link:
    """The link called ifname, or DataplaneError if it does not exist."""
    link = find_link(ipr, ifname)
    if link is None:
        raise DataplaneError(f"{ifname}: {operation}: device not found")
    return link


def link_kind(link: Link) -> str | None:
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


def delete_link(ipr: IPRoute, ifname: str) -> bool:
    """Delete the link if it exists; returns whether it did."""
    with kernel_op(ifname, "delete link", tolerate=(errno.ENODEV,)):
        ipr.link("del", ifname=ifname)
        return True
    return False


def host_label(ifname: str) -> str:
    """The label of this host's own address on a network (pyoverlay expose): at most 15 characters."""
    return f"{ifname}:ex"


def ensure_bridge(ipr: IPRoute, ifname: str, mtu: int) -> Link:
    """A bridge called ifname: up, this MTU, STP and multicast snooping off, no IP addresses."""
    link = find_link(ipr, ifname)
    if link is not None and link_kind(link) != "bridge":
        delete_link(ipr, ifname)  # something else squats the name; the name is ours by prefix
        link = None
    if link is None:
        with kernel_op(ifname, "create bridge", tolerate=(errno.EEXIST,)):
            ipr.link("add", ifname=ifname, kind="bridge", br_stp_state=0, br_mcast_snooping=0, mtu=mtu)
        link = require_link(ipr, ifname, "create bridge")
        if link_kind(link) != "bridge":
            raise DataplaneError(f"{ifname}: create bridge: exists with kind {link_kind(link)}")
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    if data is None or data.get("IFLA_BR_STP_STATE") or data.get("IFLA_BR_MCAST_SNOOPING") != 0:
        # Snooping off. Without an IGMP querier the kernel floods multicast anyway; once a container runs
        # one, a bridge that has not heard remote members' reports (devices rebuilt, host joined late)
        # keeps the group from the VXLAN port, so from every other host, until the next query
        with kernel_op(ifname, "disable STP and multicast snooping"):
            ipr.link("set", index=link["index"], kind="bridge", br_stp_state=0, br_mcast_snooping=0)
    _quiet_port(ipr, link)
    _set_mtu_up(ipr, link, mtu)
    return link


def ensure_host_address(ipr: IPRoute, link: Link, address: str | None, mac: str | None) -> None:
    """The link holds exactly ``address`` (IPv4 CIDR, labelled host_label; None: no address) and has
    ``mac`` (None: whatever MAC it has)."""
    ifname = link.get("ifname")
    wanted = None
    if address is not None:
        try:
            wanted = ipaddress.IPv4Interface(address)
        except ValueError as exc:
            raise DataplaneError(f"{ifname}: host address {address!r} is not IPv4 CIDR") from exc
    if mac is not None and link.get("address") != mac.lower():
        with kernel_op(ifname, f"set address {mac}"):
            ipr.link("set", index=link["index"], address=mac)
    with kernel_op(ifname, "list addresses"):
        addresses = ipr.addr("dump", index=link["index"])
    label = host_label(ifname)
    present = False
    for addr in addresses:
        found = (addr.get("IFA_ADDRESS"), addr["prefixlen"], addr.get("IFA_LABEL"))
        if wanted is not None and found == (str(wanted.ip), wanted.network.prefixlen, label):
            present = True
            continue
        with kernel_op(ifname, f"remove address {found[0]}", tolerate=(errno.EADDRNOTAVAIL,)):
            ipr.addr("del", index=link["index"], address=found[0], prefixlen=found[1])
    if wanted is not None and not present:
        broadcast = str(wanted.network.broadcast_address)
        with kernel_op(ifname, f"add address {wanted}", tolerate=(errno.EEXIST,)):
            ipr.addr(
                "add",
                index=link["index"],
                address=str(wanted.ip),
                prefixlen=wanted.network.prefixlen,
                broadcast=broadcast,
                label=label,
            )


def vxlan_mismatch(link: Link, vni: int, local_ip: str, port: int) -> str | None:
    """Why an existing device can't serve as this VXLAN device, or None if it can."""
    if link_kind(link) != "vxlan":
        return f"kind {link_kind(link)}"
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    v6 = ":" in local_ip  # an encrypted network's device sends from the host's IPv6 tunnel address
    expected = {
        "IFLA_VXLAN_ID": vni,
        "IFLA_VXLAN_LOCAL6" if v6 else "IFLA_VXLAN_LOCAL": local_ip,
        "IFLA_VXLAN_PORT": port,
        "IFLA_VXLAN_LEARNING": 0,
        "IFLA_VXLAN_PROXY": 1,
    }
    for attr, want in expected.items():
        have = data.get(attr) if data is not None else None
        if have != want:
            return f"{attr.removeprefix('IFLA_VXLAN_').lower()} {have!r}, want {want!r}"
    if data.get("IFLA_VXLAN_GROUP") not in (None, "0.0.0.0") or data.get("IFLA_VXLAN_COLLECT_METADATA"):
        return "has a group/remote or collects metadata"
    return None


def ensure_vxlan(
    ipr: IPRoute,
    ifname: str,
    vni: int,
    local_ip: str,
    port: int,
    mtu: int,
    bridge: Link,
    creator: IPRoute | None = None,
    netns_fd: int | None = None,
) -> Link:
    """A VXLAN device (learning off, proxy ARP on) enslaved to bridge: up, this MTU, no IP addresses.

    ipr is the bridge's namespace. With creator (a socket in another namespace) and netns_fd (the
    bridge's namespace), the device is made by creator straight into the bridge's namespace: its UDP
    socket stays in creator's, the underlay's, while the device lives beside the bridge.
    """
    link = find_link(ipr, ifname)
    if link is not None and vxlan_mismatch(link, vni, local_ip, port) is not None:
        # id, local, port, learning and proxy can't be changed on a live device: recreate it
        delete_link(ipr, ifname)
        link = None
    if link is None:
        into = {} if netns_fd is None else {"net_ns_fd": netns_fd}
        with kernel_op(ifname, f"create vxlan vni {vni} local {local_ip} port {port}", (errno.EEXIST,)):
            (creator or ipr).link(
                "add",
                ifname=ifname,
                kind="vxlan",
                vxlan_id=vni,
                **({"vxlan_local6": local_ip} if ":" in local_ip else {"vxlan_local": local_ip}),
                vxlan_port=port,
                vxlan_learning=0,
                vxlan_proxy=1,
                mtu=mtu,
                **into,
            )
        link = find_link(ipr, ifname)
        if link is None:
            # EEXIST without our device: another device already holds this VNI on this port
            raise DataplaneError(f"{ifname}: create vxlan: another device already uses vni {vni} port {port}")
        reason = vxlan_mismatch(link, vni, local_ip, port)
        if reason is not None:
            raise DataplaneError(f"{ifname}: create vxlan: device exists with {reason}")
    _enslave(ipr, link, bridge)
    _quiet_port(ipr, link)
    _set_mtu_up(ipr, link, mtu)
    return link


def ensure_veth(
    net_ipr: IPRoute,
    host_ipr: IPRoute,
    port: str,
    container: str,
    mac: str,
    mtu: int,
    bridge: Link,
    netns_fd: int,
) -> None:
    """A veth pair: ``port`` on bridge in the network's namespace (net_ipr), up, this MTU; ``container``
    in the host's (host_ipr), with mac and MTU, while it is still there.

    The container side stays down: Docker moves it into the container and renames it. Once it has moved,
    the port alone is enough.
    """
    port_link = find_link(net_ipr, port)
    peer = find_link(host_ipr, container)
    if port_link is not None and link_kind(port_link) != "veth":
        delete_link(net_ipr, port)
        port_link = None
    if peer is not None and (port_link is None or not _are_peers(port_link, peer)):
        # a stray device holding the name, not the port's peer (which lives in a container)
        delete_link(host_ipr, container)
        peer = None
    if port_link is None:
        _add_pair(host_ipr, container, port, mtu, netns_fd, {"address": mac})
        port_link = require_link(net_ipr, port, "create veth pair")
        peer = find_link(host_ipr, container)
    if peer is not None:
        changes: dict[str, Any] = {}
        if peer.get("address") != mac.lower():
            changes["address"] = mac
        if peer.get("mtu") != mtu:
            changes["mtu"] = mtu
        if changes:
            with kernel_op(container, f"set {', '.join(changes)}"):
                host_ipr.link("set", index=peer["index"], **changes)
    _enslave(net_ipr, port_link, bridge)
    _quiet_port(net_ipr, port_link)
    _set_mtu_up(net_ipr, port_link, mtu)


def ensure_host_port(
    net_ipr: IPRoute, host_ipr: IPRoute, host: str, port: str, mtu: int, bridge: Link, netns_fd: int
) -> Link:
    """A veth pair joining the host to a network (pyoverlay expose): ``host`` in the host's namespace, up,
    this MTU; ``port`` on bridge in the network's. Returns the host side."""
    host_link = find_link(host_ipr, host)
    port_link = find_link(net_ipr, port)
    if host_link is not None and (port_link is None or not _are_peers(port_link, host_link)):
        delete_link(host_ipr, host)
        host_link = None
    if host_link is None:
        delete_link(net_ipr, port)
        _add_pair(host_ipr, host, port, mtu, netns_fd)
        host_link = require_link(host_ipr, host, "create veth pair")
        port_link = require_link(net_ipr, port, "create veth pair")
    _enslave(net_ipr, port_link, bridge)
    _quiet_port(net_ipr, port_link)
    _set_mtu_up(net_ipr, port_link, mtu)
    _quiet_port(host_ipr, host_link, keep_label=host_label(host))  # before it is up: no IPv6 link-local
    _set_mtu_up(host_ipr, host_link, mtu)
    return require_link(host_ipr, host, "read host side")


def _add_pair(
    ipr: IPRoute, name: str, peer: str, mtu: int, netns_fd: int, own: Any = None, peers: Any = None
) -> bool:
    """A veth pair: name in ipr's namespace (with the attributes ``own``), peer straight into netns_fd's
    (with ``peers``); False if a name was taken (EEXIST)."""
    with kernel_op(name, f"create veth pair {name}/{peer}", tolerate=(errno.EEXIST,)):
        ipr.link(
            "add",
            ifname=name,
            kind="veth",
            mtu=mtu,
            **(own or {}),
            peer={"ifname": peer, "mtu": mtu, "net_ns_fd": netns_fd, **(peers or {})},
        )
        return True
    return False


def create_veth(
    net_ipr: IPRoute, port: str, container: str, mac: str, mtu: int, bridge: Link, host_fd: int
) -> Link | None:
    """ensure_veth's outcome in three requests when both names are free (a new endpoint): the pair is
    created from the network's namespace, ``port`` on bridge and up, ``container`` (with mac and MTU)
    straight into the host's namespace (host_fd); then IPv6 address generation is turned off on the port
    (the kernel refuses it in the creation request; the port has no carrier, so no address, until the
    container side is up), then the port is read back. None if a name is taken: ensure_veth sorts out
    what holds it."""
    created = _add_pair(
        net_ipr, port, container, mtu, host_fd, {"master": bridge["index"], "state": "up"}, {"address": mac}
    )
    if not created:
        return None
    with kernel_op(port, "disable IPv6 address generation"):
        net_ipr.link("set", ifname=port, af_spec=_NO_ADDR_GEN)
    return require_link(net_ipr, port, "create veth pair")


def veth_in_place(host_link: Link, peer: Link | None, bridge: Link, mac: str, mtu: int) -> bool:
    """Whether a pair is as ensure_veth leaves it, judged from the links alone (no further requests):
    host side a veth on bridge, up, this MTU, no IPv6 address generation; the container side, while it
    is still in this namespace, host_link's peer with mac and MTU."""
    inet6 = host_link.get_nested("IFLA_AF_SPEC", "AF_INET6")
    host_ok = (
        link_kind(host_link) == "veth"
        and host_link.get("master") == bridge["index"]
        and host_link.get("mtu") == mtu
        and bool(host_link["flags"] & IFF_UP)
        and (inet6 is None or inet6.get("IFLA_INET6_ADDR_GEN_MODE") == IN6_ADDR_GEN_MODE_NONE)
    )
    if not host_ok:
        return False
    return peer is None or (
        _are_peers(host_link, peer) and peer.get("address") == mac.lower() and peer.get("mtu") == mtu
    )


def _are_peers(host_link: Link, peer: Link) -> bool:
    return (
        link_kind(peer) == "veth"
        and host_link.get("link") == peer["index"]
        and peer.get("link") == host_link["index"]
    )


def _enslave(ipr: IPRoute, link: Link, bridge: Link) -> None:
    if link.get("master") != bridge["index"]:
        with kernel_op(link.get("ifname"), f"attach to bridge {bridge.get('ifname')}"):
            ipr.link("set", index=link["index"], master=bridge["index"])


def _set_mtu_up(ipr: IPRoute, link: Link, mtu: int) -> None:
    ifname = link.get("ifname")
    if link.get("mtu") != mtu:
        with kernel_op(ifname, f"set mtu {mtu}"):
            ipr.link("set", index=link["index"], mtu=mtu)
    if not link["flags"] & IFF_UP:
        with kernel_op(ifname, "set up"):
            ipr.link("set", index=link["index"], state="up")


def _quiet_port(ipr: IPRoute, link: Link, keep_label: str | None = None) -> None:
    """No addresses (but one labelled ``keep_label``), and no IPv6 link-local: the host must not appear
    on the overlay unless exposed."""
    ifname = link.get("ifname")
    inet6 = link.get_nested("IFLA_AF_SPEC", "AF_INET6")
    if inet6 is not None and inet6.get("IFLA_INET6_ADDR_GEN_MODE") != IN6_ADDR_GEN_MODE_NONE:
        with kernel_op(ifname, "disable IPv6 address generation"):
            ipr.link("set", index=link["index"], af_spec=_NO_ADDR_GEN)
    with kernel_op(ifname, "list addresses"):
        addresses = ipr.addr("dump", index=link["index"])
    for addr in addresses:
        address = addr.get("IFA_ADDRESS")
        if keep_label is not None and addr.get("IFA_LABEL") == keep_label:
            continue
        with kernel_op(ifname, f"remove address {address}", tolerate=(errno.EADDRNOTAVAIL,)):
            ipr.addr("del", index=link["index"], address=address, prefixlen=addr["prefixlen"])
