"""The configuration of one WireGuard device and the two ways to read and write it: wireguard-go's UAPI
socket (a text protocol with hex keys) and the kernel module's generic netlink (pyroute2's WireGuard).

Both read into the same DeviceConfig and write the same changes, so the diff that decides what to write
(peer_changes) is one pure function whatever runs the device.
"""

import base64
import binascii
import errno
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyroute2 import WireGuard

from .errors import DataplaneError
from .links import kernel_op

KEY_BYTES = 32
DEFAULT_KEEPALIVE = 25  # seconds: WireGuard's advice for NAT; also makes a newly added peer handshake at once
UAPI_TIMEOUT = 5.0


def check_key(key: str, what: str = "key") -> str:
    """key if it is a WireGuard key (base64 of 32 bytes), else ValueError saying so."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{what} {key!r} is not a WireGuard key (base64 of {KEY_BYTES} bytes)")
    return key


def canonical_endpoint(endpoint: str) -> str:
    """ "ip:port" or "[ipv6]:port" in one spelling; ValueError when it is neither."""
    host, sep, port = endpoint.rpartition(":")
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        number = int(port)
    except ValueError:
        number = 0
    if not sep or not 0 < number < 65536:
        raise ValueError(f"endpoint {endpoint!r} is not ip:port ([ip]:port for IPv6)")
    return f"[{address}]:{number}" if address.version == 6 else f"{address}:{number}"


@dataclass(frozen=True)
class TunnelPeer:
    """One peer of a tunnel, keyed by its public key: where it is and which inner addresses it owns."""

    endpoint: str  # the peer's underlay "ip:port" ("[ip]:port" for IPv6)
    allowed_ips: tuple[str, ...]  # inner CIDRs routed to, and accepted from, this peer
    keepalive: int = DEFAULT_KEEPALIVE  # seconds between keepalives; 0: none

    def __post_init__(self) -> None:
        # one spelling, so a peer read back from the device compares equal to the one written
        object.__setattr__(self, "endpoint", canonical_endpoint(self.endpoint))
        try:
            networks = {ipaddress.ip_network(cidr, strict=False) for cidr in self.allowed_ips}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"allowed ips {self.allowed_ips!r}: {exc}") from exc
        ordered = sorted(networks, key=lambda net: (net.version, net.network_address, net.prefixlen))
        object.__setattr__(self, "allowed_ips", tuple(str(net) for net in ordered))
        if not 0 <= self.keepalive < 65536:
            raise ValueError(f"keepalive {self.keepalive} is not 0..65535 seconds")


@dataclass(frozen=True)
class PeerStats:
    """What the device knows of a peer's traffic."""

    last_handshake: float  # Unix time of the last completed handshake; 0: never
    rx_bytes: int
    tx_bytes: int


@dataclass
class DeviceConfig:
    """A device's configuration as read back (private_key None: none set)."""

    private_key: str | None
    listen_port: int
    peers: dict[str, TunnelPeer] = field(default_factory=dict)
    stats: dict[str, PeerStats] = field(default_factory=dict)
    # peers with no endpoint (none of ours: we always set one); set_peers rewrites or removes them
    incomplete: set[str] = field(default_factory=set)


def peer_changes(
    desired: Mapping[str, TunnelPeer], actual: Mapping[str, TunnelPeer]
) -> tuple[list[str], dict[str, TunnelPeer]]:
    """(public keys to remove, peers to add or rewrite): peers equal on both sides are left alone, so
    their sessions, and the flows over them, are not disturbed."""
    remove = sorted(key for key in actual if key not in desired)
    upsert = {key: peer for key, peer in sorted(desired.items()) if actual.get(key) != peer}
    return remove, upsert


class ConfigChannel(Protocol):
    """Reads and writes one device's configuration."""

    def read(self) -> DeviceConfig: ...

    def write(
        self,
        private_key: str | None = None,
        listen_port: int | None = None,
        remove: Iterable[str] = (),
        upsert: Mapping[str, TunnelPeer] | None = None,
    ) -> None: ...


def _hex(key: str) -> str:
    return base64.b64decode(key).hex()


def _b64(hex_key: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_key)).decode()


class UapiChannel:
    """wireguard-go's configuration socket: "get=1" / "set=1" requests, key=value lines, "errno=N" last."""

    def __init__(self, ifname: str, path: str) -> None:
        self.ifname, self.path = ifname, path

    def read(self) -> DeviceConfig:
        config = DeviceConfig(None, 0)
        peer: dict[str, Any] | None = None
        peers: list[dict[str, Any]] = []
        for line in self._exchange("get=1\n\n", "read configuration"):
            key, _, value = line.partition("=")
            if key == "public_key":
                peer = {"key": _b64(value), "allowed": [], "keepalive": 0, "endpoint": None, "hs": 0.0}
                peer.update(rx=0, tx=0)
                peers.append(peer)
            elif peer is None:
                if key == "private_key":
                    config.private_key = _b64(value)
                elif key == "listen_port":
                    config.listen_port = int(value)
            elif key == "endpoint":
                peer["endpoint"] = value
            elif key == "allowed_ip":
                peer["allowed"].append(value)
            elif key == "persistent_keepalive_interval":
                peer["keepalive"] = int(value)
            elif key == "last_handshake_time_sec":
                peer["hs"] += int(value)
            elif key == "last_handshake_time_nsec":
                peer["hs"] += int(value) / 1e9
            elif key in ("rx_bytes", "tx_bytes"):
                peer[key[:2]] = int(value)
        for entry in peers:
            if entry["endpoint"] is None:
                config.incomplete.add(entry["key"])
                continue
            config.peers[entry["key"]] = TunnelPeer(
                entry["endpoint"], tuple(entry["allowed"]), entry["keepalive"]
            )
            config.stats[entry["key"]] = PeerStats(entry["hs"], entry["rx"], entry["tx"])
        return config

    def write(
        self,
        private_key: str | None = None,
        listen_port: int | None = None,
        remove: Iterable[str] = (),
        upsert: Mapping[str, TunnelPeer] | None = None,
    ) -> None:
        lines = ["set=1"]
        if private_key is not None:
            lines.append(f"private_key={_hex(private_key)}")
        if listen_port is not None:
            lines.append(f"listen_port={listen_port}")
        for key in remove:
            lines += [f"public_key={_hex(key)}", "remove=true"]
        for key, peer in (upsert or {}).items():
            lines += [f"public_key={_hex(key)}", f"endpoint={peer.endpoint}", "replace_allowed_ips=true"]
            lines += [f"allowed_ip={cidr}" for cidr in peer.allowed_ips]
            lines.append(f"persistent_keepalive_interval={peer.keepalive}")
        if len(lines) > 1:
            self._exchange("\n".join(lines) + "\n\n", "write configuration")

    def _exchange(self, request: str, operation: str) -> list[str]:
        answer = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(UAPI_TIMEOUT)
                sock.connect(self.path)
                sock.sendall(request.encode())
                while not answer.endswith(b"\n\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
        except OSError as exc:
            raise DataplaneError(f"{self.ifname}: {operation}: wireguard-go at {self.path}: {exc}") from exc
        lines = answer.decode(errors="replace").rstrip("\n").splitlines()
        status = lines[-1] if lines else ""
        # wireguard-go answers a failure as a negative errno
        value = status.removeprefix("errno=").removeprefix("-")
        code = int(value) if status.startswith("errno=") and value.isdigit() else errno.EPROTO
        if code:
            raise DataplaneError(
                f"{self.ifname}: {operation}: wireguard-go: [errno {code}] {os.strerror(code)}"
            )
        return lines[:-1]


class NetlinkChannel:
    """The kernel module's generic netlink family, through pyroute2 (a socket per call: calls are rare)."""

    def __init__(self, ifname: str, netns: str | None) -> None:
        self.ifname, self.netns = ifname, netns

    def _socket(self) -> WireGuard:
        # flags=0: fail on a missing namespace instead of creating it
        return WireGuard(netns=self.netns, flags=0) if self.netns else WireGuard()

    def read(self) -> DeviceConfig:
        with kernel_op(self.ifname, "read wireguard configuration"), self._socket() as wg:
            return parse_netlink(wg.info(self.ifname))
        raise AssertionError("unreachable")  # kernel_op tolerates nothing here

    def write(
        self,
        private_key: str | None = None,
        listen_port: int | None = None,
        remove: Iterable[str] = (),
        upsert: Mapping[str, TunnelPeer] | None = None,
    ) -> None:
        with kernel_op(self.ifname, "write wireguard configuration"), self._socket() as wg:
            if private_key is not None or listen_port is not None:
                wg.set(self.ifname, private_key=private_key, listen_port=listen_port)
            for key in remove:
                wg.set(self.ifname, peer={"public_key": key, "remove": True})
            for key, peer in (upsert or {}).items():
                address, _, port = peer.endpoint.rpartition(":")
                wg.set(
                    self.ifname,
                    peer={
                        "public_key": key,
                        "endpoint_addr": address.removeprefix("[").removesuffix("]"),
                        "endpoint_port": int(port),
                        "persistent_keepalive": peer.keepalive,
                        "replace_allowed_ips": True,
                        "allowed_ips": list(peer.allowed_ips),
                    },
                )


def parse_netlink(messages: Iterable[Any]) -> DeviceConfig:
    """A DeviceConfig from the kernel's WG_CMD_GET_DEVICE dump: device attributes come in the first
    message, peers are spread over all of them, and one peer's allowed IPs may continue in the next."""
    config = DeviceConfig(None, 0)
    found: dict[str, dict[str, Any]] = {}
    for msg in messages:
        private = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if private is not None and base64.b64decode(private) != bytes(KEY_BYTES):
            config.private_key = private.decode() if isinstance(private, bytes) else private
        port = msg.get_attr("WGDEVICE_A_LISTEN_PORT")
        if port is not None:
            config.listen_port = port
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or ():
            raw_key = peer.get_attr("WGPEER_A_PUBLIC_KEY")
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            entry = found.setdefault(key, {"allowed": [], "endpoint": None, "keepalive": 0, "stats": None})
            endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
            if endpoint is not None and endpoint.get("port"):
                host = endpoint["addr"]
                entry["endpoint"] = (
                    f"[{host}]:{endpoint['port']}" if ":" in host else f"{host}:{endpoint['port']}"
                )
            keepalive = peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")
            if keepalive is not None:
                entry["keepalive"] = keepalive
            handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            if handshake is not None:
                entry["stats"] = PeerStats(
                    handshake["tv_sec"] + handshake["tv_nsec"] / 1e9,
                    peer.get_attr("WGPEER_A_RX_BYTES") or 0,
                    peer.get_attr("WGPEER_A_TX_BYTES") or 0,
                )
            entry["allowed"] += [
                ip["addr"] for ip in peer.get_attr("WGPEER_A_ALLOWEDIPS") or () if "addr" in ip
            ]
    for key, entry in found.items():
        if entry["endpoint"] is None:
            config.incomplete.add(key)
            continue
        config.peers[key] = TunnelPeer(entry["endpoint"], tuple(entry["allowed"]), entry["keepalive"])
        config.stats[key] = entry["stats"] or PeerStats(0.0, 0, 0)
    return config
