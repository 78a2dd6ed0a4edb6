"""The host's service address: a /32 on a dummy device of its own, where the name service listens.
Containers reach it through their default route (docker_gwbridge), like any address of the host."""

import errno
import ipaddress

from .dataplane import open_iproute
from .errors import DataplaneError
from .links import find_link, kernel_op, link_kind, require_link

SERVICE_DEVICE = "podns0"


def ensure_service_address(address: str, ifname: str = SERVICE_DEVICE, netns: str | None = None) -> None:
    """A dummy device called ifname, up, holding address/32 (and no other address); idempotent."""
    try:
        ip = str(ipaddress.IPv4Address(address.strip()))
    except ValueError as exc:
        raise DataplaneError(f"{ifname}: service address {address!r} is not IPv4") from exc
    with open_iproute(netns) as ipr:
        link = find_link(ipr, ifname)
        if link is not None and link_kind(link) != "dummy":
            raise DataplaneError(f"{ifname}: exists with kind {link_kind(link)}, not dummy")
        if link is None:
            with kernel_op(ifname, "create dummy", tolerate=(errno.EEXIST,)):
                ipr.link("add", ifname=ifname, kind="dummy")
            link = require_link(ipr, ifname, "create dummy")
        index = link["index"]
        with kernel_op(ifname, "list addresses"):
            present = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.addr("dump", index=index)}
        for other, prefixlen in present - {(ip, 32)}:
            with kernel_op(ifname, f"remove address {other}", tolerate=(errno.EADDRNOTAVAIL,)):
                ipr.addr("del", index=index, address=other, prefixlen=prefixlen)
        if (ip, 32) not in present:
            with kernel_op(ifname, f"add address {ip}/32", tolerate=(errno.EEXIST,)):
                ipr.addr("add", index=index, address=ip, prefixlen=32)
        with kernel_op(ifname, "set up"):
            ipr.link("set", index=index, state="up")


def remove_service_address(ifname: str = SERVICE_DEVICE, netns: str | None = None) -> None:
    """Remove the dummy device if it exists."""
    with open_iproute(netns) as ipr, kernel_op(ifname, "delete link", tolerate=(errno.ENODEV,)):
        ipr.link("del", ifname=ifname)
