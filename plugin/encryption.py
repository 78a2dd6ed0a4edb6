"""This host's end of encrypted networks (`-o encrypted`): its WireGuard key, device and peers.

An encrypted network's VXLAN device sends from this host's tunnel address to the other member hosts'
tunnel addresses, which are reached only through the WireGuard device: every frame between hosts crosses
the underlay inside WireGuard. Tunnel addresses are IPv6, derived from host ids (no allocation, no store
round trip); public keys and tunnel ports are published with the host record; the private key never
leaves STATE_DIR. The kernel's WireGuard is used where the host has it, wireguard-go otherwise
(driver/wireguard.py chooses). Unencrypted networks on the same hosts keep plain VXLAN on the underlay.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from driver import DataplaneError
from driver.wireguard import Tunnel, TunnelPeer, generate_private_key, mtu_for, public_key
from kvstore import Endpoint, Host, Network

log = logging.getLogger(__name__)

DEVICE = "pyo-wg"
# a ULA /64 (RFC 4193) of the same global ID as the default IPv6 pool's /48, outside it: an interface id
# per host, so tunnel addresses need no allocation
TUNNEL_PREFIX = ipaddress.IPv6Network("fd70:796f:7601::/64")
VXLAN6_OVERHEAD = 70  # inner Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8, inside the tunnel
KEY_FILE = "wireguard/private.key"


def tunnel_address(host_id: str) -> str:
    """The host's address inside the tunnels: TUNNEL_PREFIX with 64 bits of its id's hash."""
    suffix = int.from_bytes(hashlib.sha256(host_id.encode()).digest()[:8], "big")
    return str(TUNNEL_PREFIX.network_address + max(suffix, 1))


def tunnel_peers(
    host_id: str,
    networks: Mapping[str, Network],
    endpoints: Mapping[str, Mapping[str, Endpoint]],
    hosts: Mapping[str, Host],
) -> dict[str, TunnelPeer]:
    """Public key -> peer, for every other host that shares an encrypted network with this one: both have
    an endpoint in it. A host with the network bound but no endpoint in it has no peers there: the members
    do not peer with it, and its handshakes would go unanswered every few seconds. A host that published
    no key (an agent from before encryption) gets none: its traffic can't come in."""
    members: set[str] = set()
    for network_id, eps in endpoints.items():
        network = networks.get(network_id)
        hosts_in = {e.host_id for e in eps.values()}
        if network is not None and network.encrypted and host_id in hosts_in:
            members |= hosts_in
    members.discard(host_id)
    peers = {}
    for member in sorted(members):
        host = hosts.get(member)
        if host is None or not host.public_key or not host.tunnel_port:
            continue
        peers[host.public_key] = TunnelPeer(
            endpoint=f"{host.address}:{host.tunnel_port}", allowed_ips=(f"{tunnel_address(member)}/128",)
        )
    return peers


class HostTunnel:
    """The WireGuard device of encrypted networks on this host, made when the first is bound here."""

    def __init__(
        self,
        state_dir: str,
        host_id: str,
        port: int,
        underlay_mtu: int,
        tunnel: Callable[[str], Tunnel] = Tunnel,
    ) -> None:
        self.host_id = host_id
        self.port = port
        self.address = tunnel_address(host_id)
        self.device_mtu = mtu_for(underlay_mtu, ipv6_underlay=False)
        self._key_path = Path(state_dir) / KEY_FILE
        self._private = self._load_or_make_key()
        self.public_key = public_key(self._private)
        self._tunnel = tunnel(DEVICE)
        self._lock = threading.Lock()  # handlers (CreateNetwork, Join) and the event loop both ensure
        self._up = False
        self._gone = False  # known absent: a device an earlier run left with no network needing it is removed
        self._applied: dict[str, TunnelPeer] | None = None  # the peers last set, None: read them back

    @property
    def mode(self) -> str:
        """ "kernel" or "userspace": which WireGuard carries the tunnels."""
        return self._tunnel.mode

    def vxlan_mtu(self) -> int:
        """The most an encrypted network's containers can send: the device's MTU less VXLAN over IPv6."""
        return self.device_mtu - VXLAN6_OVERHEAD

    def _load_or_make_key(self) -> str:
        try:
            return self._key_path.read_text().strip()
        except FileNotFoundError:
            return self._write_key(generate_private_key())

    def _write_key(self, key: str) -> str:
        self._key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._key_path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # O_CREAT keeps an old file's mode: the key is never readable by others
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(key + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self._key_path)
        return key

    def ensure(self) -> None:
        """The device up with this host's key, port and address (idempotent; cheap once up)."""
        with self._lock:
            if self._up and self._tunnel.alive():
                return
            address = f"{self.address}/{TUNNEL_PREFIX.prefixlen}"
            self._tunnel.ensure(self._private, self.port, address, self.device_mtu)
            log.info(
                "tunnel device %s up: %s WireGuard, UDP port %d, MTU %d, address %s",
                DEVICE, self.mode, self.port, self.device_mtu, address,
            )  # fmt: skip
            self._up, self._applied, self._gone = True, None, False

    def follow(
        self,
        networks: Mapping[str, Network],
        endpoints: Mapping[str, Mapping[str, Endpoint]],
        hosts: Mapping[str, Host],
        force: bool = False,
    ) -> None:
        """Converge the device's peers on what the event loop knows; the device goes with the last
        encrypted network bound here. force: compare with the device, not with what was last set."""
        wanted = tunnel_peers(self.host_id, networks, endpoints, hosts)
        bound = any(n is not None and n.encrypted for n in (networks.get(i) for i in endpoints))
        try:
            if not bound:
                self._remove()
                return
            self.ensure()
            with self._lock:
                if force or not self._tunnel.alive():
                    self._applied = None
                if self._applied == wanted:
                    return
                self._tunnel.set_peers(wanted)
                self._applied = dict(wanted)
        except DataplaneError as exc:
            log.warning("encrypted networks' tunnel %s: %s", DEVICE, exc)

    def supervise(self) -> bool:
        """The device made anew with its key, port, address and peers if it went while in use (its
        wireguard-go died, or someone deleted it); returns whether it was. For the event loop's timer: without
        it a dead tunnel would wait for the next event or resync."""
        with self._lock:
            if not self._up:
                return False
            try:
                return self._tunnel.supervise()
            except DataplaneError as exc:
                log.warning("encrypted networks' tunnel %s is gone and not made anew: %s", DEVICE, exc)
                self._up, self._applied = False, None  # the next follow() makes it
                return False

    def _remove(self) -> None:
        with self._lock:
            if self._gone:
                return
            was_up = self._up
            self._tunnel.remove()  # also a device or wireguard-go an earlier run left
            if was_up:
                log.info("no encrypted network bound here: tunnel device %s removed", DEVICE)
            self._up, self._applied, self._gone = False, None, True

    def rotate(self) -> str:
        """A new key pair: the private key replaced on the device and on disk; returns the public key,
        which the caller publishes (peers follow the host record). On a failure the old key stays in
        both places, so the key published and the key in use never part."""
        key = generate_private_key()
        with self._lock:
            if self._up:
                self._tunnel.set_private_key(key)
            try:
                self._write_key(key)
            except OSError:
                if self._up:
                    self._tunnel.set_private_key(self._private)
                raise
            self._private, self.public_key = key, public_key(key)
        log.info("tunnel key rotated: public key now %s", self.public_key)
        return self.public_key
