"""The host's service address, where the name service listens: a /32 on the loopback device (every
kernel has it; a dummy device needs a module some kernels lack), labelled as pyoverlay's. Containers
reach it through their default route (docker_gwbridge), like any address of the host."""

import errno
import ipaddress

from .dataplane import open_iproute
from .errors import DataplaneError
from .links import kernel_op, require_link

LOOPBACK = "lo"
LABEL = "lo:pyoverlay"  # marks the address as ours in `ip addr`


def ensure_service_address(address: str, netns: str | None = None) -> None:
    """address/32 on the loopback device; idempotent."""
    ip = _ipv4(address)
    with open_iproute(netns) as ipr:
        index = require_link(ipr, LOOPBACK, "add service address")["index"]
        with kernel_op(LOOPBACK, f"add address {ip}/32", tolerate=(errno.EEXIST,)):
            ipr.addr("add", index=index, address=ip, prefixlen=32, label=LABEL)


def remove_service_address(address: str, netns: str | None = None) -> None:
    """Remove address/32 from the loopback device if it is there."""
    ip = _ipv4(address)
    with open_iproute(netns) as ipr:
        index = require_link(ipr, LOOPBACK, "remove service address")["index"]
        with kernel_op(LOOPBACK, f"remove address {ip}/32", tolerate=(errno.EADDRNOTAVAIL,)):
            ipr.addr("del", index=index, address=ip, prefixlen=32)


def _ipv4(address: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address.strip()))
    except ValueError as exc:
        raise DataplaneError(f"{LOOPBACK}: service address {address!r} is not IPv4") from exc
