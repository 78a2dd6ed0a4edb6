"""Allocation arithmetic of the cluster policy: parsing, overlap checks, subnet carving, address and VNI
picking. Pure functions, no I/O. Messages reach users through Docker, so they name what was asked.
"""

from __future__ import annotations

import socket
from collections.abc import Container, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from .model import Conflict, Exhausted, InvalidRequest

VNI_MIN = 4096  # below this: room for VNIs an operator assigns by hand
VNI_MAX = 2**24 - 1
# a network needs a gateway and at least one container besides the network (and IPv4 broadcast) address
MAX_PREFIXLEN = 30
MAX_PREFIXLEN6 = 126
Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


def max_prefixlen(net: Network) -> int:
    return MAX_PREFIXLEN if net.version == 4 else MAX_PREFIXLEN6


def parse_subnet(cidr: str, what: str = "subnet") -> Network:
    """``cidr`` as an IPv4 or IPv6 network; InvalidRequest if it is not one or has host bits set."""
    example = f"{what} {cidr} is not a CIDR like 10.1.0.0/24 or fd00:1::/64"
    if not isinstance(cidr, str) or "/" not in cidr:
        raise InvalidRequest(example)
    try:
        return ip_network(cidr.strip())
    except ValueError:
        pass
    try:
        loose = ip_network(cidr.strip(), strict=False)
    except ValueError:
        raise InvalidRequest(example) from None
    raise InvalidRequest(f"{what} {cidr} has host bits set (the network is {loose})")


def parse_address(address: str) -> Address:
    """A bare IPv4 or IPv6 address ("10.1.0.5", "fd00::5"); InvalidRequest otherwise."""
    try:
        return ip_address(address.strip())
    except (ValueError, AttributeError):
        raise InvalidRequest(f"address {address} is not an IP address") from None


def pool_shape(subnet: str, ip_range: str | None) -> tuple[Network, Network | None]:
    """Validate a requested pool: a subnet of at most /30 (IPv6: /126) and an ip_range inside it."""
    net = parse_subnet(subnet)
    if net.prefixlen > max_prefixlen(net):
        raise InvalidRequest(f"subnet {net} is too small: pyoverlay needs at least a /{max_prefixlen(net)}")
    if ip_range is None:
        return net, None
    rng = parse_subnet(ip_range, "ip range")
    if rng.version != net.version or not rng.subnet_of(net):  # type: ignore[arg-type]
        raise InvalidRequest(f"ip range {rng} is not inside subnet {net}")
    return net, rng


def find_overlap(subnet: Network, pools: Iterable[str]) -> str | None:
    """The first existing pool (CIDR string) of the same family overlapping ``subnet``, or None."""
    for other in pools:
        net = ip_network(other)
        if net.version == subnet.version and subnet.overlaps(net):  # type: ignore[arg-type]
            return other
    return None


def carve_subnet(default_range: str, prefixlen: int, pools: Iterable[str]) -> Network:
    """The lowest ``/prefixlen`` inside ``default_range`` overlapping none of ``pools`` (of its family)."""
    rng = parse_subnet(default_range, "default address range")
    if not rng.prefixlen <= prefixlen <= max_prefixlen(rng):
        raise InvalidRequest(
            f"cannot carve /{prefixlen} subnets out of {rng}: the size must be /{rng.prefixlen}"
            f"../{max_prefixlen(rng)}"
        )
    size = 2 ** (rng.max_prefixlen - prefixlen)
    nets = [n for n in map(ip_network, pools) if n.version == rng.version]
    taken = [(int(n.network_address), int(n.broadcast_address)) for n in nets]
    candidate, last = int(rng.network_address), int(rng.broadcast_address)
    # Each pass either returns or jumps past a blocking pool, so at most len(pools) + 1 passes.
    while candidate + size - 1 <= last:
        end = candidate + size - 1
        blocking = [hi for lo, hi in taken if lo <= end and hi >= candidate]
        if not blocking:
            return type(rng)((candidate, prefixlen))
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


def check_requested_address(subnet: str, address: str) -> Address:
    """``address`` if a container may hold it in ``subnet``: inside, not the network or (IPv4) broadcast
    address. IPv6 has no broadcast; its network address is the subnet-router anycast address."""
    net, addr = ip_network(subnet), parse_address(address)
    if addr.version != net.version or addr not in net:  # type: ignore[operator]
        raise Conflict(f"address {addr} is outside subnet {net}")
    if addr == net.network_address:
        raise Conflict(f"address {addr} is the network address of {net}")
    if net.version == 4 and addr == net.broadcast_address:
        raise Conflict(f"address {addr} is the broadcast address of {net}")
    return addr


def address_ints(addresses: Iterable[str]) -> set[int]:
    """Canonical addresses (dotted quads, or IPv6 text) as a set of ints, the form ``free_addresses``
    looks up."""
    # inet_aton is ~20x faster than IPv4Address(): pools hold thousands of addresses.
    return {
        int.from_bytes(socket.inet_pton(socket.AF_INET6, a), "big")
        if ":" in a
        else int.from_bytes(socket.inet_aton(a), "big")
        for a in addresses
    }


def free_addresses(
    subnet: str,
    ip_range: str | None,
    taken: Container[int],
    after: str | None = None,
    limit: int = 1,
) -> list[Address]:
    """Up to ``limit`` addresses of ``ip_range`` (or the subnet) not in ``taken`` (see address_ints),
    never the subnet's network or (IPv4) broadcast address, in round-robin order starting after
    ``after``. Exhausted if there is none."""
    net = ip_network(subnet)
    rng = ip_network(ip_range) if ip_range else net
    make = IPv4Address if net.version == 4 else IPv6Address
    low = max(int(rng.network_address), int(net.network_address) + 1)
    high = min(int(rng.broadcast_address), int(net.broadcast_address) - (net.version == 4))
    found: list[Address] = []
    if low <= high:
        count = high - low + 1
        start = int(ip_address(after)) + 1 if after else low
        if not low <= start <= high:
            start = low
        # Stops after len(taken) + limit steps at most: cheap even in a /8.
        for step in range(count):
            candidate = low + (start - low + step) % count
            if candidate not in taken:
                found.append(make(candidate))
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
