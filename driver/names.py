"""Deterministic interface names (the kernel allows at most 15 characters)."""

import re

MAX_VNI = (1 << 24) - 1
BRIDGE_PREFIX = "pobr"
VXLAN_PREFIX = "povx"
HOST_VETH_PREFIX = "poh"
CONTAINER_VETH_PREFIX = "poc"
EXPOSURE_HOST_PREFIX = "poex"  # the host's side of its veth into a network (pyoverlay expose)
EXPOSURE_PORT_PREFIX = "poep"  # that veth's port on the network's bridge
RETIRED_VETH_PREFIX = "podel"  # + the host side's ifindex: a pair taken out of service, to be deleted
ENDPOINT_PREFIX_LEN = 12

_ENDPOINT_ID = re.compile(r"^[0-9a-zA-Z]{12,}$")
_NETWORK_NAME = re.compile(r"^(?:pobr|povx)([1-9][0-9]{0,7})$")
_HOST_VETH = re.compile(r"^poh([0-9a-zA-Z]{12})$")
_CONTAINER_VETH = re.compile(r"^poc([0-9a-zA-Z]{12})$")
_RETIRED_VETH = re.compile(r"^podel[1-9][0-9]{0,9}$")


def check_vni(vni: int) -> int:
    """Return vni if it is a valid VXLAN network identifier, else raise ValueError."""
    if isinstance(vni, bool) or not isinstance(vni, int) or not 1 <= vni <= MAX_VNI:
        raise ValueError(f"VNI must be an integer in 1..{MAX_VNI}, got {vni!r}")
    return vni


def bridge_name(vni: int) -> str:
    """Name of the Linux bridge for a network, e.g. ``pobr4096``."""
    return f"{BRIDGE_PREFIX}{check_vni(vni)}"


def vxlan_name(vni: int) -> str:
    """Name of the VXLAN device for a network, e.g. ``povx4096``."""
    return f"{VXLAN_PREFIX}{check_vni(vni)}"


def exposure_names(vni: int) -> tuple[str, str]:
    """(host side, bridge port) of the veth that joins the host to a network, e.g. ``poex4096``."""
    return f"{EXPOSURE_HOST_PREFIX}{check_vni(vni)}", f"{EXPOSURE_PORT_PREFIX}{vni}"


def veth_names(endpoint_id: str) -> tuple[str, str]:
    """(host side, container side) veth names for a Docker endpoint ID."""
    if not isinstance(endpoint_id, str) or not _ENDPOINT_ID.match(endpoint_id):
        raise ValueError(f"endpoint ID must be at least 12 alphanumeric characters, got {endpoint_id!r}")
    prefix = endpoint_id[:ENDPOINT_PREFIX_LEN]
    return HOST_VETH_PREFIX + prefix, CONTAINER_VETH_PREFIX + prefix


def vni_from_name(ifname: str) -> int | None:
    """The VNI encoded in a pyoverlay bridge or VXLAN name, or None for any other name."""
    match = _NETWORK_NAME.match(ifname)
    return int(match.group(1)) if match and int(match.group(1)) <= MAX_VNI else None


def endpoint_prefix_from_name(ifname: str, side: str = "host") -> str | None:
    """The 12-character endpoint ID prefix of a host-side (or, with side="container", a container-side)
    veth name, or None for any other name."""
    match = (_HOST_VETH if side == "host" else _CONTAINER_VETH).match(ifname)
    return match.group(1) if match else None


def retired_veth_name(ifindex: int) -> str:
    """The name a retired host-side veth takes until it is deleted, e.g. ``podel42``: unique while it
    lives (ifindexes are), and never an endpoint's."""
    if isinstance(ifindex, bool) or not isinstance(ifindex, int) or not 1 <= ifindex < 1 << 31:
        raise ValueError(f"ifindex must be a positive 32-bit integer, got {ifindex!r}")
    return f"{RETIRED_VETH_PREFIX}{ifindex}"


def is_retired_veth(ifname: str) -> bool:
    """Whether ifname is a retired veth's name (see retired_veth_name)."""
    return bool(_RETIRED_VETH.match(ifname))
