"""Agent settings: every one is a command-line flag and an environment variable of the same meaning
(the managed plugin sets the variables; the flag wins when both are given)."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Settings:
    socket: str = "/run/docker/plugins/pyoverlay.sock"
    etcd_endpoints: tuple[str, ...] = ()  # empty: the embedded single-host store
    state_dir: str = "/var/lib/pyoverlay"
    advertise_addr: str = ""  # empty: the address of the interface holding the default route
    log_level: str = "info"
    log_format: str = "text"  # "json": one object per line, for log shippers
    default_pool: str = "10.200.0.0/13"
    default_pool_size: int = 24
    # a ULA (RFC 4193) /48 with the fixed global ID 70:796f:76 ("pyov"): change it if your site uses it
    default_pool6: str = "fd70:796f:7600::/48"
    default_pool6_size: int = 64
    # address blocks a host claims and allocates in alone (docs/kvstore.md, "Blocks"): a /28 is 16 addresses
    block_size: int = 28
    block_size6: int = 122
    vxlan_port: int = 4789
    wireguard_port: int = 51820  # UDP port of the tunnel device of encrypted networks
    etcd_ca_cert: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    workers_threads: int = 8
    host_ttl: int = 30  # seconds a host counts as alive in the store without a heartbeat
    resync_interval: int = 30  # seconds between checks of the kernel against the store (drift repair)
    driver_name: str = ""  # as `docker network create -d` names us; empty: found out from the daemon
    dns_address: str = "169.254.53.53"  # where the name service listens (daemon.json "dns"); "" turns it off
    dns_upstreams: tuple[str, ...] = ()  # where other names go; empty: the host's /etc/resolv.conf
    netns_dir: str = "/run/netns"  # where each network's namespace is mounted (pyoverlay-<vni>)
    # the host's neighbour table limit (ARP/NDP entries of all its containers), raised to this at start
    neigh_table_size: int = 16384
    metrics_addr: str = ""  # HOST:PORT of the Prometheus /metrics endpoint; empty: not served

    @property
    def embedded(self) -> bool:
        return not self.etcd_endpoints


_HELP = {
    "socket": "unix socket Docker talks to",
    "etcd_endpoints": "comma-separated etcd URLs; empty uses the embedded single-host store",
    "state_dir": "where the host id, the embedded store and the agent's PID file live",
    "advertise_addr": "underlay IPv4 address for VXLAN (default: the default-route interface's)",
    "log_level": "debug, info, warning or error",
    "log_format": "text, or json (one object per line, for log shippers)",
    "default_pool": "range that subnets are carved from when a network names none",
    "default_pool_size": "prefix length of carved subnets",
    "default_pool6": "IPv6 range that IPv6 subnets are carved from when a network names none",
    "default_pool6_size": "prefix length of carved IPv6 subnets",
    "block_size": "prefix length of the IPv4 address blocks a host claims in a new pool (0: no blocks)",
    "block_size6": "prefix length of the IPv6 address blocks a host claims in a new pool (0: no blocks)",
    "vxlan_port": "UDP port of the VXLAN devices",
    "wireguard_port": "UDP port of the WireGuard device that carries encrypted networks",
    "neigh_table_size": "raise the host's ARP/NDP table limit (gc_thresh3) to this many entries; 0: leave it",
    "etcd_ca_cert": "CA certificate file for etcd TLS",
    "etcd_cert": "client certificate file for etcd TLS",
    "etcd_key": "client key file for etcd TLS",
    "workers_threads": "request threads of the HTTP worker",
    "host_ttl": "seconds a host stays alive in the store without a heartbeat",
    "resync_interval": "seconds between checks that repair kernel entries changed by hand",
    "driver_name": "our driver name in Docker (default: the enabled pyoverlay plugin, else pyoverlay)",
    "dns_address": "IPv4 address of the name service containers reach (empty: no name service)",
    "dns_upstreams": "comma-separated resolvers (ADDRESS[:PORT]) for other names (default: /etc/resolv.conf)",
    "netns_dir": "directory where each network's namespace is mounted, as pyoverlay-<VNI>",
    "metrics_addr": "HOST:PORT to serve Prometheus metrics on, e.g. 127.0.0.1:9464 (default: not served)",
}


def _env_name(name: str) -> str:
    return name.upper()


# What the operator commands (hosts, forget-host) use: the store, and how much to log.
STORE_SETTINGS = ("etcd_endpoints", "etcd_ca_cert", "etcd_cert", "etcd_key", "state_dir", "log_level")
# LOG_FORMAT is read from the environment by every command (load() reads every setting), a flag on serve


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """One flag per setting (or per setting in ``names``); defaults come from the environment, then from
    Settings. A setting without a flag is still read from the environment by load()."""
    wanted = None if names is None else set(names)
    for f in fields(Settings):
        if wanted is not None and f.name not in wanted:
            continue
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag, dest=f.name, default=None, help=f"{_HELP[f.name]} (env {_env_name(f.name)})"
        )


def load(args: argparse.Namespace | None = None, env: Mapping[str, str] = os.environ) -> Settings:
    """Settings from flags, else environment variables, else defaults; validated."""
    raw: dict[str, str] = {}
    for f in fields(Settings):
        value = getattr(args, f.name, None) if args is not None else None
        if value is None:
            value = env.get(_env_name(f.name))
        if value is not None:
            raw[f.name] = value
    return _validate(raw)


def _validate(raw: dict[str, str]) -> Settings:
    values: dict[str, object] = {}
    for key, value in raw.items():
        value = value.strip()
        if key == "etcd_endpoints":
            values[key] = tuple(_endpoint(e) for e in value.split(",") if e.strip())
        elif key == "log_format":
            values[key] = value.lower()
        elif key == "dns_upstreams":
            values[key] = tuple(_upstream(e) for e in value.split(",") if e.strip())
        elif key in (
            "default_pool_size",
            "default_pool6_size",
            "block_size",
            "block_size6",
            "vxlan_port",
            "workers_threads",
            "host_ttl",
            "resync_interval",
            "neigh_table_size",
            "wireguard_port",
        ):
            try:
                values[key] = int(value)
            except ValueError:
                raise SystemExit(f"pyoverlay: {key.upper()} must be an integer, got {value!r}") from None
        else:
            values[key] = value
    settings = Settings(**values)  # type: ignore[arg-type]
    try:
        pool = ipaddress.IPv4Network(settings.default_pool)
    except ValueError:
        raise SystemExit(f"pyoverlay: DEFAULT_POOL {settings.default_pool!r} is not an IPv4 subnet") from None
    if not pool.prefixlen <= settings.default_pool_size <= 30:
        raise SystemExit(f"pyoverlay: DEFAULT_POOL_SIZE must be between {pool.prefixlen} and 30")
    try:
        pool6 = ipaddress.IPv6Network(settings.default_pool6)
    except ValueError:
        raise SystemExit(
            f"pyoverlay: DEFAULT_POOL6 {settings.default_pool6!r} is not an IPv6 subnet"
        ) from None
    if not pool6.prefixlen <= settings.default_pool6_size <= 126:
        raise SystemExit(f"pyoverlay: DEFAULT_POOL6_SIZE must be between {pool6.prefixlen} and 126")
    if settings.block_size and not 16 <= settings.block_size <= 30:
        raise SystemExit("pyoverlay: BLOCK_SIZE must be 0 (no blocks) or between 16 and 30")
    if settings.block_size6 and not 96 <= settings.block_size6 <= 126:
        raise SystemExit("pyoverlay: BLOCK_SIZE6 must be 0 (no blocks) or between 96 and 126")
    if settings.advertise_addr:
        _address("advertise_addr", settings.advertise_addr)
    if settings.dns_address:
        _address("dns_address", settings.dns_address)
    if settings.metrics_addr:
        split_host_port(settings.metrics_addr)
    if not os.path.isabs(settings.netns_dir):
        raise SystemExit(f"pyoverlay: NETNS_DIR must be an absolute path, got {settings.netns_dir!r}")
    if not 1 <= settings.vxlan_port <= 65535:
        raise SystemExit("pyoverlay: VXLAN_PORT must be between 1 and 65535")
    if not 1 <= settings.wireguard_port <= 65535 or settings.wireguard_port == settings.vxlan_port:
        raise SystemExit("pyoverlay: WIREGUARD_PORT must be between 1 and 65535, and not VXLAN_PORT")
    if bool(settings.etcd_cert) != bool(settings.etcd_key):
        raise SystemExit("pyoverlay: ETCD_CERT and ETCD_KEY go together (a client certificate and its key)")
    if settings.host_ttl < 3:
        raise SystemExit("pyoverlay: HOST_TTL must be at least 3 seconds")
    if not 1 <= settings.resync_interval <= 3600:
        raise SystemExit("pyoverlay: RESYNC_INTERVAL must be between 1 and 3600 seconds")
    if settings.neigh_table_size and not 1024 <= settings.neigh_table_size <= 1 << 24:
        raise SystemExit("pyoverlay: NEIGH_TABLE_SIZE must be 0 (leave the host's) or 1024 to 16777216")
    if not 1 <= settings.workers_threads <= 256:
        raise SystemExit("pyoverlay: WORKERS_THREADS must be between 1 and 256")
    if settings.log_format not in ("text", "json"):
        raise SystemExit(f"pyoverlay: LOG_FORMAT must be text or json, got {settings.log_format!r}")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise SystemExit(
            f"pyoverlay: LOG_LEVEL must be debug, info, warning or error, got {settings.log_level!r}"
        )
    return settings


def _address(key: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise SystemExit(f"pyoverlay: {key.upper()} {value.strip()!r} is not an IPv4 address") from None


def split_host_port(value: str) -> tuple[str, int]:
    """METRICS_ADDR as (host, port): HOST:PORT with an IP address, [IPv6]:PORT, or :PORT for every
    address; SystemExit saying what is wrong otherwise."""
    host, colon, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        if not colon or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError
        if host:
            ipaddress.ip_address(host)  # a name would resolve to one address of many: say which
    except ValueError:
        raise SystemExit(
            f"pyoverlay: METRICS_ADDR {value.strip()!r} is not HOST:PORT (an IP address and a port, "
            "[IPv6]:PORT, or :PORT for every address)"
        ) from None
    return host or "0.0.0.0", int(port)


def _upstream(value: str) -> str:
    address, colon, port = value.strip().partition(":")
    if colon and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise SystemExit(f"pyoverlay: DNS_UPSTREAMS: {value.strip()!r} is not ADDRESS[:PORT]")
    return _address("dns_upstreams", address) + (f":{port}" if colon else "")


def _endpoint(value: str) -> str:
    value = value.strip()
    return value if "://" in value else "http://" + value
