"""Block arithmetic (kvstore/blocks.py), by property: the safety of allocating while etcd is away rests on
blocks of one pool never overlapping, and on a host's picks never leaving its own blocks."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import alloc, blocks


@st.composite
def pools(draw: st.DrawFn) -> tuple[str, str | None, int]:
    """(subnet, ip_range or None, wanted block prefix length), IPv4 or IPv6."""
    v6 = draw(st.booleans())
    bits = 128 if v6 else 32
    prefixlen = draw(st.integers(bits - 16, bits - 2))
    base = draw(st.integers(0, (1 << bits) - 1)) >> (bits - prefixlen) << (bits - prefixlen)
    subnet = (IPv6Network if v6 else IPv4Network)((base, prefixlen))
    ip_range = None
    if draw(st.booleans()) and prefixlen < bits - 2:
        range_len = draw(st.integers(prefixlen + 1, bits - 2))
        ip_range = str(draw(st.sampled_from(list(subnet.subnets(new_prefix=range_len))[:64])))
    wanted = draw(st.sampled_from([0, bits - 8, bits - 6, bits - 4, bits - 2]))
    return str(subnet), ip_range, wanted


@settings(max_examples=300, deadline=None)
@given(pools())
def test_blocks_cover_the_range_without_overlapping(pool: tuple[str, str | None, int]):
    subnet, ip_range, wanted = pool
    prefixlen = blocks.block_prefixlen(subnet, ip_range, wanted)
    rng = ip_network(ip_range or subnet)
    if prefixlen == 0:
        assert wanted == 0 or rng.prefixlen + 2 > alloc.max_prefixlen(rng)
        return
    assert prefixlen >= wanted and prefixlen >= rng.prefixlen + 2  # at least 4 blocks
    every = blocks.free_blocks(subnet, ip_range, prefixlen, set(), limit=1 << 12)
    assert len(every) == min(1 << (prefixlen - rng.prefixlen), 1 << 12)
    nets = [ip_network(b) for b in every]
    assert all(n.subnet_of(rng) and n.prefixlen == prefixlen for n in nets)  # type: ignore[arg-type]
    starts = sorted(int(n.network_address) for n in nets)
    assert all(b - a == nets[0].num_addresses for a, b in zip(starts, starts[1:], strict=False))  # disjoint
    for n in nets[:8]:  # every address of a block maps back to that block, and only to it
        for address in (n.network_address, n.broadcast_address):
            assert blocks.block_of(address, prefixlen) == str(n)
            assert blocks.in_range(str(n), subnet, ip_range)


@settings(max_examples=200, deadline=None)
@given(pools(), st.data())
def test_free_blocks_never_returns_a_claimed_one(pool: tuple[str, str | None, int], data: st.DataObject):
    subnet, ip_range, wanted = pool
    prefixlen = blocks.block_prefixlen(subnet, ip_range, wanted)
    if not prefixlen:
        return
    every = blocks.free_blocks(subnet, ip_range, prefixlen, set(), limit=64)
    claimed = set(data.draw(st.lists(st.sampled_from(every), max_size=len(every))))
    free = blocks.free_blocks(subnet, ip_range, prefixlen, claimed, limit=64)
    assert not claimed & set(free)
    assert set(free) == set(every) - claimed or len(free) == 64


@settings(max_examples=200, deadline=None)
@given(pools(), st.data())
def test_two_hosts_allocating_in_their_own_blocks_never_meet(
    pool: tuple[str, str | None, int], data: st.DataObject
):
    """Host a and host b each hand out every address of their own blocks, knowing nothing of each other
    (as while etcd is away): no address twice, none outside their blocks, never the network or (IPv4)
    broadcast address of the subnet."""
    subnet, ip_range, wanted = pool
    prefixlen = blocks.block_prefixlen(subnet, ip_range, wanted)
    if not prefixlen or prefixlen < ip_network(subnet).max_prefixlen - 6:
        return  # keep blocks small enough to exhaust here
    every = blocks.free_blocks(subnet, ip_range, prefixlen, set(), limit=16)
    mine = set(data.draw(st.lists(st.sampled_from(every), min_size=1, max_size=3)))
    theirs = set(data.draw(st.lists(st.sampled_from(sorted(set(every) - mine) or every), max_size=3))) - mine
    handed: dict[str, list[str]] = {}
    for host, held in (("a", mine), ("b", theirs)):
        taken: set[int] = set()
        out = handed.setdefault(host, [])
        while found := blocks.free_in_blocks(subnet, held, taken, limit=1):
            address = str(found[0])
            out.append(address)
            taken |= alloc.address_ints([address])
            assert any(blocks.address_in(address, b) for b in held)
        assert len(out) == sum(blocks.block_usable(b, subnet) for b in held)  # every usable one
    assert not set(handed["a"]) & set(handed["b"])
    net = ip_network(subnet)
    for address in handed["a"] + handed["b"]:
        assert ip_address(address) != net.network_address
        assert net.version == 6 or ip_address(address) != net.broadcast_address


def test_a_default_docker_subnet_gets_16_blocks_of_16_and_a_small_one_smaller_blocks():
    assert blocks.block_prefixlen("10.200.0.0/24", None, 28) == 28
    assert blocks.block_prefixlen("10.200.0.0/26", None, 28) == 28
    assert blocks.block_prefixlen("10.200.0.0/27", None, 28) == 29  # 4 blocks of 8
    assert blocks.block_prefixlen("10.200.0.0/29", None, 28) == 0  # blocks of 2: none, addresses one by one
    assert blocks.block_prefixlen("10.200.0.0/16", "10.200.5.0/24", 28) == 28  # blocks of the ip range
    assert blocks.block_prefixlen("fd70::/64", None, 122) == 122
    assert blocks.block_prefixlen("10.200.0.0/24", None, 0) == 0
    assert blocks.free_blocks("10.200.0.0/24", None, 28, {"10.200.0.0/28"}, limit=2) == [
        "10.200.0.16/28",
        "10.200.0.32/28",
    ]
    assert blocks.block_usable("10.200.0.0/28", "10.200.0.0/24") == 15  # the network address is not
