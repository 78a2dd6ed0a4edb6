"""Address-block arithmetic: a pool's dynamic range split into aligned blocks a host claims and then
allocates in alone. Pure functions, no I/O (tests/unit/test_blocks.py checks them by property).

A block is an aligned ``/prefixlen`` of the pool's ip_range (or subnet when it has none). Blocks of one
pool never overlap and cover the range, so two hosts allocating each inside its own blocks can never
pick the same address: that is the whole safety argument for allocating while the store is away.
"""

from __future__ import annotations

from collections.abc import Collection, Container
from ipaddress import ip_address, ip_network

from .alloc import Address, Network, free_addresses, max_prefixlen
from .model import Exhausted

MIN_BLOCKS = 4  # a pool holds at least this many blocks, so a small pool is shared by several hosts
MAX_SCAN = 1 << 16  # blocks looked at for a free one; an IPv6 /64 holds 2**58 /122s


def block_prefixlen(subnet: str, ip_range: str | None, wanted: int) -> int:
    """The block size (prefix length) of a pool: ``wanted``, or smaller blocks when the pool would hold
    fewer than MIN_BLOCKS of them; 0 (no blocks: addresses go through the store one by one) when
    ``wanted`` is 0 or the blocks would hold fewer than 4 addresses."""
    if not wanted:
        return 0
    rng = ip_network(ip_range or subnet)
    prefixlen = max(wanted, rng.prefixlen + (MIN_BLOCKS.bit_length() - 1))
    return prefixlen if prefixlen <= max_prefixlen(rng) else 0


def block_size(subnet: str, prefixlen: int) -> int:
    """How many addresses a ``/prefixlen`` block of ``subnet``'s family holds."""
    return 1 << (ip_network(subnet).max_prefixlen - prefixlen)


def block_of(address: str | Address, prefixlen: int) -> str:
    """The block (CIDR) holding ``address``."""
    return str(ip_network(f"{address}/{prefixlen}", strict=False))


def in_range(block: str, subnet: str, ip_range: str | None) -> bool:
    """Whether ``block`` is one of the pool's blocks (inside its dynamic range)."""
    net, rng = ip_network(block), ip_network(ip_range or subnet)
    return net.version == rng.version and net.subnet_of(rng)  # type: ignore[arg-type]


def free_blocks(
    subnet: str, ip_range: str | None, prefixlen: int, claimed: Collection[str], limit: int = 1
) -> list[str]:
    """Up to ``limit`` blocks of the pool not in ``claimed``, lowest first; [] when every block is claimed.
    Stops after len(claimed) + limit blocks at most (bounded by MAX_SCAN)."""
    rng: Network = ip_network(ip_range or subnet)
    size = 1 << (rng.max_prefixlen - prefixlen)
    count = 1 << (prefixlen - rng.prefixlen)
    base = int(rng.network_address)
    found: list[str] = []
    for n in range(min(count, MAX_SCAN)):
        block = str(type(rng)((base + n * size, prefixlen)))
        if block not in claimed:
            found.append(block)
            if len(found) == limit:
                break
    return found


def block_usable(block: str, subnet: str) -> int:
    """How many addresses of ``block`` a container may hold (the subnet's network and IPv4 broadcast
    addresses excepted)."""
    net, sub = ip_network(block), ip_network(subnet)
    excluded = sum(
        1
        for a in (sub.network_address, sub.broadcast_address if sub.version == 4 else None)
        if a is not None and a in net  # type: ignore[operator]
    )
    return net.num_addresses - excluded


def free_in_blocks(
    subnet: str, blocks: Collection[str], taken: Container[int], limit: int = 1
) -> list[Address]:
    """Up to ``limit`` free addresses (not in ``taken``, see alloc.address_ints) of ``blocks``, the
    lowest blocks first; [] if they are full."""
    found: list[Address] = []
    for block in sorted(blocks, key=lambda b: int(ip_network(b).network_address)):
        try:
            found += free_addresses(subnet, block, taken, None, limit - len(found))
        except Exhausted:  # this block is full
            continue
        if len(found) >= limit:
            break
    return found


def address_in(address: str, block: str) -> bool:
    return ip_address(address) in ip_network(block)
