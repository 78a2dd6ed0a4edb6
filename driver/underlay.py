"""Detect the underlay: the address VXLAN packets leave from, and the MTU of its interface."""

import ipaddress
import socket
from typing import Any

from pyroute2 import IPRoute

from .dataplane import open_iproute
from .errors import DataplaneError
from .links import describe

_RT_TABLE_MAIN = 254


def default_route_address(netns: str | None = None) -> str:
    """IPv4 address of the interface holding the IPv4 default route (its preferred source, if set)."""
    where = f"netns {netns or '(current)'}"
    with open_iproute(netns) as ipr:
        try:
            routes = [
                route
                for route in ipr.route("dump", family=socket.AF_INET)
                if route["dst_len"] == 0 and route.get("RTA_TABLE", route["table"]) == _RT_TABLE_MAIN
            ]
            routes.sort(key=lambda route: route.get("RTA_PRIORITY") or 0)  # the one the kernel prefers
            for route in routes:
                if route.get("RTA_PREFSRC"):
                    return str(route.get("RTA_PREFSRC"))
                for index in _route_interfaces(route):
                    address = _first_ipv4(ipr, index)
                    if address is not None:
                        return address
        except DataplaneError:
            raise
        except Exception as exc:
            raise DataplaneError(f"{where}: find default route address: {describe(exc)}") from exc
    raise DataplaneError(
        f"{where}: no IPv4 default route with an address: pass the underlay address explicitly"
    )


def mtu_for_address(address: str, netns: str | None = None) -> int:
    """MTU of the interface that holds address."""
    where = f"netns {netns or '(current)'}"
    try:
        wanted = ipaddress.ip_address(address)
    except ValueError as exc:
        raise DataplaneError(f"{where}: find MTU for {address!r}: not an IP address") from exc
    with open_iproute(netns) as ipr:
        try:
            for addr in ipr.addr("dump"):
                if ipaddress.ip_address(addr.get("IFA_ADDRESS")) == wanted:
                    return int(ipr.link("get", index=addr["index"])[0].get("IFLA_MTU"))
        except Exception as exc:
            raise DataplaneError(f"{where}: find MTU for {address}: {describe(exc)}") from exc
    raise DataplaneError(f"{where}: find MTU for {address}: no interface holds this address")


def _route_interfaces(route: Any) -> list[int]:
    if route.get("RTA_OIF"):
        return [route.get("RTA_OIF")]
    return [hop["oif"] for hop in route.get("RTA_MULTIPATH") or [] if hop.get("oif")]


def _first_ipv4(ipr: IPRoute, index: int) -> str | None:
    for addr in ipr.addr("dump", family=socket.AF_INET, index=index):
        return str(addr.get("IFA_LOCAL") or addr.get("IFA_ADDRESS"))
    return None
