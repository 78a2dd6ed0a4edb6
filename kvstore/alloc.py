"""Allocation arithmetic of the cluster policy: parsing, overlap checks, subnet carving, address and VNI
picking. Pure functions, no I/O. Messages reach users through Docker, so they name what was asked.
"""

from __future__ import annotations

import socket
from collections.abc import Container, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network

from .model import Conflict, Exhausted, InvalidRequest

VNI_MIN = 4096  # below this: room for VNIs an operator assigns by hand
VNI_MAX = 2**24 - 1
MAX_PREFIXLEN = 30  # a network needs a gateway and at least one container besides network/broadcast


def parse_subnet(cidr: str, what: str = "subnet") -> IPv4Network:
    """``cidr`` as an IPv4 network; InvalidRequest if it is not one or has host bits set."""
    if not isinstance(cidr, str) or "/" not in cidr:
        raise InvalidRequest(f"{what} {cidr} is not an IPv4 CIDR like 10.1.0.0/24")
    try:
        return IPv4Network(cidr.strip())
    except ValueError:
        pass
    try:
        loose = IPv4Network(cidr.strip(), strict=False)
    except ValueError:
        raise InvalidRequest(f"{what} {cidr} is not an IPv4 CIDR like 10.1.0.0/24") from None
    raise InvalidRequest(f"{what} {cidr} has host bits set (the network is {loose})")


def parse_address(address: str) -> IPv4Address:
    """A bare IPv4 address ("10.1.0.5"); InvalidRequest otherwise."""
    try:
        return IPv4Address(address.strip())
    except (ValueError, AttributeError):
        raise InvalidRequest(f"address {address} is not an IPv4 address") from None


def pool_shape(subnet: str, ip_range: str | None) -> tuple[IPv4Network, IPv4Network | None]:
    """Validate a requested pool: a subnet of at most /30 and an ip_range inside it."""
    net = parse_subnet(subnet)
    if net.prefixlen > MAX_PREFIXLEN:
        raise InvalidRequest(f"subnet {net} is too small: pyoverlay needs at least a /{MAX_PREFIXLEN}")
    if ip_range is None:
        return net, None
    rng = parse_subnet(ip_range, "ip range")
    if not rng.subnet_of(net):
        raise InvalidRequest(f"ip range {rng} is not inside subnet {net}")
    return net, rng


def find_overlap(subnet: IPv4Network, pools: Iterable[str]) -> str | None:
    """The first existing pool (CIDR string) overlapping ``subnet``, or None."""
    for other in pools:
        if subnet.overlaps(IPv4Network(other)):
            return other
    return None


def carve_subnet(default_range: str, prefixlen: int, pools: Iterable[str]) -> IPv4Network:
    """The lowest ``/prefixlen`` inside ``default_range`` overlapping none of ``pools``."""
    rng = parse_subnet(default_range, "default address range")
    if not rng.prefixlen <= prefixlen <= MAX_PREFIXLEN:
        raise InvalidRequest(
            f"cannot carve /{prefixlen} subnets out of {rng}: the size must be /{rng.prefixlen}"
            f"../{MAX_PREFIXLEN}"
        )
    size = 2 ** (32 - prefixlen)
    taken = [(int(n.network_address), int(n.broadcast_address)) for n in map(IPv4Network, pools)]
    candidate, last = int(rng.network_address), int(rng.broadcast_address)
    # Each pass either returns or jumps past a blocking pool, so at most len(pools) + 1 passes.
    while candidate + size - 1 <= last:
        end = candidate + size - 1
        blocking = [hi for lo, hi in taken if lo <= end and hi >= candidate]
        if not blocking:
            return IPv4Network((candidate, prefixlen))
        candidate = -(-(max(blocking) + 1) // size) * size  # round up to the next /prefixlen boundary
    raise Exhausted(f"no free /{prefixlen} subnet left in {rng}")


def plan_pool(
    subnet: str | None,
    ip_range: str | None,
    default_range: str,
    prefixlen: int,
    existing: Mapping[str, str | None],
) -> tuple[str, str | None]:
    """The (subnet, ip_range) to claim given ``existing`` pools (subnet -> ip_range). Equal to an existing
    pool when that one can be shared; Conflict on overlap or a different ip_range; Exhausted if no
    subnet is free."""
    if subnet is None:
        if ip_range is not None:
            raise InvalidRequest(f"ip range {ip_range} needs a subnet")
        return str(carve_subnet(default_range, prefixlen, existing)), None
    net, rng = pool_shape(subnet, ip_range)
    key, want = str(net), (str(rng) if rng else None)
    if key in existing:
        if existing[key] != want:
            raise Conflict(
                f"pool {key} already exists with ip range {existing[key] or '(whole subnet)'}, "
                f"not {want or '(whole subnet)'}"
            )
        return key, want
    other = find_overlap(net, existing)
    if other is not None:
        raise Conflict(f"subnet {net} overlaps pool {other}")
    return key, want


def check_requested_address(subnet: str, address: str) -> IPv4Address:
    """``address`` if a container may hold it in ``subnet``: inside, not the network or broadcast."""
    net, addr = IPv4Network(subnet), parse_address(address)
    if addr not in net:
        raise Conflict(f"address {addr} is outside subnet {net}")
    if addr == net.network_address:
        raise Conflict(f"address {addr} is the network address of {net}")
    if addr == net.broadcast_address:
        raise Conflict(f"address {addr} is the broadcast address of {net}")
    return addr


def address_ints(addresses: Iterable[str]) -> set[int]:
    """Canonical dotted-quad addresses as a set of ints, the form ``free_addresses`` looks up."""
    # inet_aton is ~20x faster than IPv4Address(): pools hold thousands of addresses.
    return {int.from_bytes(socket.inet_aton(a), "big") for a in addresses}


def free_addresses(
    subnet: str,
    ip_range: str | None,
    taken: Container[int],
    after: str | None = None,
    limit: int = 1,
) -> list[IPv4Address]:
    """Up to ``limit`` addresses of ``ip_range`` (or the subnet) not in ``taken`` (see address_ints),
    never the subnet's network or broadcast address, in round-robin order starting after ``after``.
    Exhausted if there is none."""
    net = IPv4Network(subnet)
    rng = IPv4Network(ip_range) if ip_range else net
    low = max(int(rng.network_address), int(net.network_address) + 1)
    high = min(int(rng.broadcast_address), int(net.broadcast_address) - 1)
    found: list[IPv4Address] = []
    if low <= high:
        count = high - low + 1
        start = int(IPv4Address(after)) + 1 if after else low
        if not low <= start <= high:
            start = low
        # Stops after len(taken) + limit steps at most: cheap even in a /8.
        for step in range(count):
            candidate = low + (start - low + step) % count
            if candidate not in taken:
                found.append(IPv4Address(candidate))
                if len(found) == limit:
                    break
    if not found:
        where = f" in ip range {rng}" if ip_range else ""
        raise Exhausted(f"pool {net} has no free address{where}")
    return found


def next_free_address(subnet: str, ip_range: str | None, used: Iterable[str], after: str | None) -> str:
    """The next free address after ``after`` (round-robin) given the ``used`` addresses."""
    return str(free_addresses(subnet, ip_range, address_ints(used), after, 1)[0])


def pick_vni(used: Iterable[int], low: int = VNI_MIN, high: int = VNI_MAX) -> int:
    """The lowest free VNI in low..high."""
    taken = set(used)
    vni = low
    while vni in taken:
        vni += 1
    if vni > high:
        raise Exhausted(f"no free VNI left in {low}..{high}")
    return vni
