"""One dataclass per request of Docker's remote NetworkDriver and IpamDriver protocols, parsed and validated
here so that services only ever see typed values (field names follow libnetwork's drivers/remote/api)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import BadRequest

GENERIC_OPTIONS = "com.docker.network.generic"
MTU_OPTION = "com.docker.network.driver.mtu"
MAC_OPTION = "com.docker.network.endpoint.macaddress"
REQUEST_TYPE_OPTION = "RequestAddressType"
GATEWAY_TYPE = "com.docker.network.gateway"
ENCRYPTED_OPTION = "encrypted"  # Docker's overlay takes `-o encrypted`: users will try it here
IPV4_OPTION = "com.docker.network.enable_ipv4"
IPV6_OPTION = "com.docker.network.enable_ipv6"
KNOWN_OPTIONS = (MTU_OPTION, ENCRYPTED_OPTION)
# libnetwork's own keys: Docker >= 27 acts on `-o` of these itself and leaves them in the generic map
DOCKER_OPTIONS = (IPV4_OPTION, IPV6_OPTION)
# RFC 1122 3.3.2: every IPv4 host accepts 576-byte datagrams; below that (68 is the hard floor) every
# ordinary datagram fragments, and the value is a typo (mtu=140 for 1400) rather than a setup
MIN_MTU = 576

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_ID = re.compile(r"^[0-9A-Za-z_.-]{1,128}$")
_ENDPOINT_ID = re.compile(r"^[0-9A-Za-z]{12,128}$")  # interface names are derived from the first 12

T = TypeVar("T")
SHOWN_CHARS = 64  # of a value echoed in an error: a megabyte-long field must not come back to the user


def _clip(text: str, quote: bool = False) -> str:
    """A value as an error shows it: cut to SHOWN_CHARS with its length; with quote, repr'd (control
    characters visible)."""
    cut = text[:SHOWN_CHARS]
    shown = repr(cut) if quote else cut
    return shown if len(text) <= SHOWN_CHARS else f"{shown}… ({len(text)} characters)"


def _get(
    body: dict[str, Any], key: str, kind: type[T], default: T | None = None, required: bool = False
) -> T:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"missing field {key!r}")
        return default  # type: ignore[return-value]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _ident(body: dict[str, Any], key: str, pattern: re.Pattern[str] = _ID) -> str:
    value = _get(body, key, str, required=True)
    if not pattern.match(value):
        raise BadRequest(f"field {key!r} is not a valid ID: {_clip(value, quote=True)}")
    return value


def _pool_id(body: dict[str, Any]) -> str:
    # pyoverlay's PoolIDs are subnets (kvstore.Pool): anything else is refused before it becomes a store key
    value = _get(body, "PoolID", str, required=True)
    try:
        ipaddress.ip_network(value)
    except ValueError:
        raise BadRequest(
            f"PoolID {_clip(value, quote=True)} is not a pyoverlay pool: "
            "its PoolIDs are subnets, e.g. 10.1.0.0/24"
        ) from None
    return value


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object, got {type(value).__name__}")
    return {str(k): v if isinstance(v, str) else str(v) for k, v in value.items()}


def _docker_bool(generic: dict[str, str], key: str) -> bool | None:
    """A boolean driver option as Docker's strconv.ParseBool reads it; None when absent."""
    if key not in generic:
        return None
    value = generic[key]
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise BadRequest(f"-o {key}={_clip(value)}: the value must be true or false")


def _check_driver_options(generic: dict[str, str]) -> int | None:
    """Refuse what pyoverlay cannot honour rather than ignore it; return the MTU option, if given."""
    if ENCRYPTED_OPTION in generic:
        # `-o encrypted` alone, as Docker's overlay takes it, or a boolean; kept as "true" or not at all
        if generic[ENCRYPTED_OPTION] == "" or _docker_bool(generic, ENCRYPTED_OPTION):
            generic[ENCRYPTED_OPTION] = "true"
        else:
            del generic[ENCRYPTED_OPTION]
    unknown = sorted(set(generic) - set(KNOWN_OPTIONS) - set(DOCKER_OPTIONS))
    if unknown:
        options = ", ".join(f"-o {_clip(key)}" for key in unknown)
        known = f"-o {MTU_OPTION}=N, -o {ENCRYPTED_OPTION}"
        raise BadRequest(
            f"pyoverlay does not know the driver option{'s' if len(unknown) > 1 else ''} {options}; "
            f"the driver options it knows: {known}"
        )
    if MTU_OPTION not in generic:
        return None
    value = generic[MTU_OPTION]
    try:
        mtu = int(value)
    except ValueError:
        raise BadRequest(
            f"-o {MTU_OPTION}={_clip(value)}: the MTU must be a whole number of bytes, "
            f"e.g. -o {MTU_OPTION}=1400"
        ) from None
    if mtu < MIN_MTU:
        raise BadRequest(
            f"-o {MTU_OPTION}={mtu} is too small: pyoverlay takes {MIN_MTU} bytes or more (the datagram "
            "size every IPv4 host must accept); leave the option out to get the most the underlay allows"
        )
    return mtu


def parse_mac(value: str, what: str = "MAC address") -> str:
    mac = value.strip().lower()
    if not _MAC.match(mac):
        raise BadRequest(f"{what} {_clip(value, quote=True)} is not a MAC address")
    first = int(mac[:2], 16)
    if first & 1 or mac == "00:00:00:00:00:00":  # the kernel refuses either on a veth (EADDRNOTAVAIL)
        raise BadRequest(
            f"{what} {mac} is a {'multicast' if first & 1 else 'zero'} address: an interface needs a unicast "
            "one (first byte even, e.g. 02:42:0a:00:00:02; 02 marks it locally administered)"
        )
    return mac


def parse_interface_cidr(value: str, what: str, version: int = 4) -> Any:
    """An IPv4Interface (``version`` 6: IPv6Interface) from "address/prefixlen"."""
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise BadRequest(f"{what} {_clip(value, quote=True)} is not an address in CIDR form") from None
    if iface.version != version:
        raise BadRequest(f"{what} {_clip(value, quote=True)} is not an IPv{version} address")
    return iface


def _ipam_data(body: dict[str, Any], key: str, version: int) -> list[IPAMData]:
    found = []
    for item in _get(body, key, list, []):
        if not isinstance(item, dict):
            raise BadRequest(f"{key} entries must be objects")
        pool = _get(item, "Pool", str, required=True)
        try:
            net = ipaddress.ip_network(pool)
        except ValueError:
            net = None
        if net is None or net.version != version:
            raise BadRequest(f"{key}.Pool {_clip(pool, quote=True)} is not an IPv{version} subnet")
        gateway = _get(item, "Gateway", str) or None
        if gateway:
            parse_interface_cidr(gateway, f"{key}.Gateway", version)
        found.append(IPAMData(address_space=_get(item, "AddressSpace", str, ""), pool=pool, gateway=gateway))
    return found


# -- NetworkDriver ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IPAMData:
    """One entry of CreateNetwork's IPv4Data or IPv6Data."""

    address_space: str
    pool: str  # subnet, CIDR
    gateway: str | None  # CIDR ("10.0.0.1/24") as Docker sends it


@dataclass(frozen=True)
class CreateNetworkRequest:
    docker_network_id: str  # Docker's NetworkID: per host; the cluster network is bound to it
    ipv4: list[IPAMData]
    ipv6_requested: bool
    generic: dict[str, str]  # -o key=value options
    mtu: int | None
    ipv6: tuple[IPAMData, ...] = ()
    ipv4_disabled: bool = False  # Docker >= 28 --ipv4=false (or -o com.docker.network.enable_ipv4=false)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> CreateNetworkRequest:
        options = _get(body, "Options", dict, {})
        generic = _str_map(options.get(GENERIC_OPTIONS), "Options." + GENERIC_OPTIONS)
        mtu = _check_driver_options(generic)
        ipv6 = _ipam_data(body, "IPv6Data", 6)
        return cls(
            docker_network_id=_ident(body, "NetworkID"),
            ipv4=_ipam_data(body, "IPv4Data", 4),
            # Docker 20.10 leaves `-o com.docker.network.enable_ipv6=true` to the driver
            ipv6_requested=bool(ipv6)
            or options.get(IPV6_OPTION) is True
            or bool(_docker_bool(generic, IPV6_OPTION)),
            generic=generic,
            mtu=mtu,
            ipv6=tuple(ipv6),
            ipv4_disabled=options.get(IPV4_OPTION) is False or _docker_bool(generic, IPV4_OPTION) is False,
        )


@dataclass(frozen=True)
class NetworkRequest:
    """DeleteNetwork, FreeNetwork, AllocateNetwork: only the ID matters to us."""

    docker_network_id: str  # Docker's NetworkID: per host; the cluster network is bound to it

    @classmethod
    def parse(cls, body: dict[str, Any]) -> NetworkRequest:
        return cls(docker_network_id=_ident(body, "NetworkID"))


@dataclass(frozen=True)
class EndpointRequest:
    """DeleteEndpoint, EndpointOperInfo, Join, Leave, Program/RevokeExternalConnectivity."""

    docker_network_id: str  # Docker's NetworkID: per host; the cluster network is bound to it
    endpoint_id: str

    @classmethod
    def parse(cls, body: dict[str, Any]) -> EndpointRequest:
        return cls(
            docker_network_id=_ident(body, "NetworkID"), endpoint_id=_ident(body, "EndpointID", _ENDPOINT_ID)
        )


@dataclass(frozen=True)
class CreateEndpointRequest:
    docker_network_id: str  # Docker's NetworkID: per host; the cluster network is bound to it
    endpoint_id: str
    address: ipaddress.IPv4Interface | None
    ipv6_address: ipaddress.IPv6Interface | None
    mac: str | None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> CreateEndpointRequest:
        iface = _get(body, "Interface", dict, {})
        address = _get(iface, "Address", str) or None
        address6 = _get(iface, "AddressIPv6", str) or None
        mac = _get(iface, "MacAddress", str) or None
        return cls(
            docker_network_id=_ident(body, "NetworkID"),
            endpoint_id=_ident(body, "EndpointID", _ENDPOINT_ID),
            address=parse_interface_cidr(address, "Interface.Address") if address else None,
            ipv6_address=parse_interface_cidr(address6, "Interface.AddressIPv6", 6) if address6 else None,
            mac=parse_mac(mac, "Interface.MacAddress") if mac else None,
        )


# -- IpamDriver ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestPoolRequest:
    address_space: str
    pool: str | None
    sub_pool: str | None
    v6: bool

    @classmethod
    def parse(cls, body: dict[str, Any]) -> RequestPoolRequest:
        return cls(
            address_space=_get(body, "AddressSpace", str, ""),
            pool=_get(body, "Pool", str) or None,
            sub_pool=_get(body, "SubPool", str) or None,
            v6=_get(body, "V6", bool, False),
        )


@dataclass(frozen=True)
class PoolRequest:
    pool_id: str

    @classmethod
    def parse(cls, body: dict[str, Any]) -> PoolRequest:
        return cls(pool_id=_pool_id(body))


@dataclass(frozen=True)
class RequestAddressRequest:
    pool_id: str
    address: str | None
    mac: str | None
    is_gateway: bool

    @classmethod
    def parse(cls, body: dict[str, Any]) -> RequestAddressRequest:
        options = _str_map(body.get("Options"), "Options")
        address = _get(body, "Address", str) or None
        if address:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise BadRequest(f"Address {_clip(address, quote=True)} is not an IP address") from None
        mac = options.get(MAC_OPTION) or None
        return cls(
            pool_id=_pool_id(body),
            address=address,
            mac=parse_mac(mac, MAC_OPTION) if mac else None,
            is_gateway=options.get(REQUEST_TYPE_OPTION) == GATEWAY_TYPE,
        )


@dataclass(frozen=True)
class ReleaseAddressRequest:
    pool_id: str
    address: str

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ReleaseAddressRequest:
        address = _get(body, "Address", str, required=True)
        try:
            # Docker sends a bare address; tolerate CIDR form
            bare = str(ipaddress.ip_interface(address).ip)
        except ValueError:
            raise BadRequest(f"Address {_clip(address, quote=True)} is not an IP address") from None
        return cls(pool_id=_pool_id(body), address=bare)
