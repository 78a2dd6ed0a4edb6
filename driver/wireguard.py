"""One WireGuard device on a host: the kernel module through netlink where the kernel can make a
``wireguard`` link, else the userspace wireguard-go (driver/wireguard_go.py). Both are configured through
one DeviceConfig and one pure peer diff (driver/wireguard_config.py).

Keys are base64, WireGuard's own format (what `wg genkey`/`wg pubkey` print). A private key never leaves
this host; only the public key is meant for the store.
"""

import base64
import dataclasses
import errno
import ipaddress
import logging
import re
import secrets
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from . import wireguard_go
from .errors import DataplaneError
from .links import delete_link, find_link, kernel_op, link_kind
from .sockets import open_iproute
from .wireguard_config import (
    DEFAULT_KEEPALIVE,
    ConfigChannel,
    DeviceConfig,
    NetlinkChannel,
    PeerStats,
    TunnelPeer,
    UapiChannel,
    check_key,
    peer_changes,
)

__all__ = [
    "DEFAULT_KEEPALIVE",
    "PeerStats",
    "Tunnel",
    "TunnelPeer",
    "generate_private_key",
    "kernel_wireguard",
    "mtu_for",
    "public_key",
]

log = logging.getLogger(__name__)

KERNEL, USERSPACE = "kernel", "userspace"
NETNS_DIR = "/run/netns"
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_kernel_probe: list[bool] = []  # [] not probed yet; one answer per process (the kernel's modules)


def generate_private_key() -> str:
    """A new X25519 private key, base64 (clamped on use by WireGuard, as `wg genkey` leaves it)."""
    return base64.b64encode(X25519PrivateKey.generate().private_bytes_raw()).decode()


def public_key(private: str) -> str:
    """The public key of a private key, both base64."""
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(check_key(private, "private key")))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def mtu_for(underlay_mtu: int, ipv6_underlay: bool) -> int:
    """The tunnel device's MTU: WireGuard adds 60 bytes over IPv4 (IP 20, UDP 8, its header 16, tag 16),
    80 over IPv6 (IP 40)."""
    mtu = underlay_mtu - (80 if ipv6_underlay else 60)
    if mtu < 576:
        raise ValueError(f"underlay MTU {underlay_mtu} leaves {mtu} for the tunnel: too small")
    return mtu


def kernel_wireguard() -> bool:
    """Whether this kernel can make a ``wireguard`` link (asked once: a throwaway link, made and deleted)."""
    if not _kernel_probe:
        name = f"pyowgp{secrets.token_hex(4)}"
        with IPRoute() as ipr:
            try:
                ipr.link("add", ifname=name, kind="wireguard")
            except Exception:  # EOPNOTSUPP, or pyroute2's own error for a kind the kernel lacks
                _kernel_probe.append(False)
            else:
                ipr.link("del", ifname=name)
                _kernel_probe.append(True)
    return _kernel_probe[0]


@dataclasses.dataclass(frozen=True)
class _Settings:
    private_key: str
    listen_port: int
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    mtu: int


class Tunnel:
    """One WireGuard device called ``name`` in network namespace ``netns`` (a path, or a name under
    /run/netns; None: this process's). ``mode`` "kernel" or "userspace"; None chooses: the running device's,
    else the kernel module where the kernel has it. A Tunnel adopts a device already there (an agent
    restarted while it kept forwarding); not thread-safe: one owner (the event loop) calls it."""

    def __init__(self, name: str, netns: str | None = None, mode: str | None = None) -> None:
        if not _IFNAME.match(name):
            raise ValueError(f"tunnel name {name!r}: 1-15 letters, digits, '_', '.', '-'")
        if mode not in (None, KERNEL, USERSPACE):
            raise ValueError(f"tunnel mode {mode!r}: kernel, userspace or None")
        self.name = name
        self.netns = None if netns is None else netns if "/" in netns else f"{NETNS_DIR}/{netns}"
        self._mode = mode
        self._settings: _Settings | None = None  # the last ensure(): what supervise() rebuilds
        self._peers: dict[str, TunnelPeer] | None = None  # the last set_peers()

    @property
    def mode(self) -> str:
        """ "kernel" or "userspace"."""
        if self._mode is None:
            with open_iproute(self.netns) as ipr:
                link = find_link(ipr, self.name)
            if link is not None and link_kind(link) in ("wireguard", "tun"):
                self._mode = KERNEL if link_kind(link) == "wireguard" else USERSPACE
            else:
                self._mode = KERNEL if kernel_wireguard() else USERSPACE
            log.info("%s: WireGuard %s", self.name, self._mode)
        return self._mode

    def _channel(self) -> ConfigChannel:
        if self.mode == KERNEL:
            return NetlinkChannel(self.name, self.netns)
        return UapiChannel(self.name, wireguard_go.socket_path(self.name))

    def ensure(self, private_key: str, listen_port: int, address_cidr: str, mtu: int) -> None:
        """Make the device exist and be up with this key, UDP port, inner address (the only one it holds)
        and MTU. Idempotent: what already matches is not touched. Bad input: ValueError, nothing made."""
        check_key(private_key, "private key")
        if not 0 < listen_port < 65536:
            raise ValueError(f"listen port {listen_port} is not 1..65535")
        try:
            address = ipaddress.ip_interface(address_cidr)
        except ValueError as exc:
            raise ValueError(f"tunnel address {address_cidr!r} is not an IP address with prefix") from exc
        if not 576 <= mtu <= 65535:
            raise ValueError(f"tunnel MTU {mtu} is not 576..65535")
        settings = _Settings(private_key, listen_port, address, mtu)
        created = self._ensure_device()
        try:
            self._configure(settings)
        except (DataplaneError, ValueError):
            if created:  # a device this call made and could not configure (port taken): leave none behind
                self.remove()
            raise
        self._settings = settings

    def set_private_key(self, private_key: str) -> None:
        """Replace the device's key (rotation). Sessions end: each peer handshakes anew once it knows the
        new public key, at once if it keeps alive (TunnelPeer.keepalive)."""
        check_key(private_key, "private key")
        if self._settings is not None:
            self._settings = dataclasses.replace(self._settings, private_key=private_key)
        self._channel().write(private_key=private_key)

    def set_peers(self, peers: Mapping[str, TunnelPeer]) -> tuple[list[str], list[str]]:
        """Converge the device's peers to exactly ``peers`` (public key → peer); returns (keys added or
        rewritten, keys removed). Peers already as wanted are not touched, nor their sessions."""
        wanted = {check_key(key, "peer public key"): peer for key, peer in peers.items()}
        self._peers = wanted
        return self._write_peers(self._channel().read(), wanted)

    def peers(self) -> dict[str, TunnelPeer]:
        """The device's peers as it has them."""
        return self._channel().read().peers

    def stats(self) -> dict[str, PeerStats]:
        """Per peer: last handshake and bytes (for status and metrics)."""
        return self._channel().read().stats

    def public_key(self) -> str | None:
        """The device's public key (None: it has no private key)."""
        private = self._channel().read().private_key
        return None if private is None else public_key(private)

    def alive(self) -> bool:
        """Whether the device exists (and in userspace, whether its wireguard-go answers)."""
        if self.mode == USERSPACE and not self._daemon_running():
            return False
        with open_iproute(self.netns) as ipr:
            link = find_link(ipr, self.name)
        return link is not None and link_kind(link) == ("wireguard" if self.mode == KERNEL else "tun")

    def supervise(self) -> bool:
        """For the agent's periodic work: if the device is gone (its wireguard-go died, or someone deleted
        it), make it anew with the last ensure()'s settings and set_peers()' peers. Returns whether it did."""
        if self._settings is None or self.alive():
            return False
        if self.mode == USERSPACE:
            log.warning(
                "%s: wireguard-go is gone (%s); starting another",
                self.name,
                wireguard_go.last_words(self.name),
            )
        else:
            log.warning("%s: WireGuard device is gone; making it anew", self.name)
        wanted = self._settings
        self.ensure(wanted.private_key, wanted.listen_port, str(wanted.address), wanted.mtu)
        if self._peers is not None:
            self._write_peers(self._channel().read(), self._peers)
        return True

    def remove(self) -> None:
        """Delete the device (and stop its wireguard-go). Idempotent."""
        if self.mode == USERSPACE:
            pid = wireguard_go.daemon_pid(self.name, self.netns)
            if pid is not None:
                wireguard_go.stop_daemon(self.name, pid)
            wireguard_go.forget(self.name)
        with open_iproute(self.netns) as ipr:
            link = find_link(ipr, self.name)
            if link is not None and link_kind(link) in ("wireguard", "tun"):
                delete_link(ipr, self.name)
        self._settings = None
        self._peers = None

    # --- internals -------------------------------------------------------------------------------------
    def _daemon_running(self) -> bool:
        return wireguard_go.daemon_pid(self.name, self.netns) is not None and wireguard_go.answers(self.name)

    def _ensure_device(self) -> bool:
        """Make the device if it is missing; returns whether it did."""
        with open_iproute(self.netns) as ipr:
            link = find_link(ipr, self.name)
            kind = "wireguard" if self.mode == KERNEL else "tun"
            running = self.mode == KERNEL or self._daemon_running()
            if link is not None and link_kind(link) == kind and running:
                return False
            if link is not None:
                # a TUN device whose wireguard-go is gone, or another kind under our name: make it anew
                delete_link(ipr, self.name)
            if self.mode == KERNEL:
                with kernel_op(self.name, "create wireguard device", tolerate=(errno.EEXIST,)):
                    ipr.link("add", ifname=self.name, kind="wireguard")
                return True
        wireguard_go.start_daemon(self.name, self.netns)
        return True

    def _configure(self, settings: _Settings) -> None:
        channel = self._channel()
        config = channel.read()
        key = None if config.private_key == settings.private_key else settings.private_key
        port = None if config.listen_port == settings.listen_port else settings.listen_port
        if key is not None or port is not None:
            channel.write(private_key=key, listen_port=port)
        with open_iproute(self.netns) as ipr:
            link = find_link(ipr, self.name)
            if link is None:
                raise DataplaneError(f"{self.name}: configure: device vanished")
            self._ensure_address(ipr, link["index"], settings.address)
            if link.get("mtu") != settings.mtu:
                with kernel_op(self.name, f"set mtu {settings.mtu}"):
                    ipr.link("set", index=link["index"], mtu=settings.mtu)
            if not link["flags"] & IFF_UP:
                with kernel_op(self.name, "set up"):
                    ipr.link("set", index=link["index"], state="up")

    def _ensure_address(
        self, ipr: IPRoute, index: int, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ) -> None:
        with kernel_op(self.name, "list addresses"):
            present = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.addr("dump", index=index)]
        wanted = (str(address.ip), address.network.prefixlen)
        for found in present:
            if found != wanted and not ipaddress.ip_address(found[0]).is_link_local:
                with kernel_op(self.name, f"remove address {found[0]}", tolerate=(errno.EADDRNOTAVAIL,)):
                    ipr.addr("del", index=index, address=found[0], prefixlen=found[1])
        if wanted not in present:
            with kernel_op(self.name, f"add address {address}", tolerate=(errno.EEXIST,)):
                ipr.addr("add", index=index, address=wanted[0], prefixlen=wanted[1])

    def _write_peers(
        self, config: DeviceConfig, wanted: Mapping[str, TunnelPeer]
    ) -> tuple[list[str], list[str]]:
        remove, upsert = peer_changes(wanted, config.peers)
        remove += sorted(config.incomplete - set(wanted))
        if remove or upsert:
            self._channel().write(remove=remove, upsert=upsert)
            log.info("%s: peers: %d set, %d removed", self.name, len(upsert), len(remove))
        return list(upsert), remove
