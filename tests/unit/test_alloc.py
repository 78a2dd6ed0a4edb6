"""kvstore.alloc: the allocation arithmetic both stores share."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from kvstore import Conflict, Exhausted, InvalidRequest
from kvstore.alloc import (
    VNI_MAX,
    VNI_MIN,
    address_ints,
    carve_subnet,
    check_requested_address,
    find_overlap,
    free_addresses,
    next_free_address,
    parse_address,
    parse_subnet,
    pick_vni,
    plan_pool,
    pool_shape,
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.1.0.0", "is not a CIDR"),
        ("10.1.0.300/24", "is not a CIDR"),
        ("fd00::/129", "is not a CIDR"),
        ("fd00::g/64", "is not a CIDR"),
        ("10.1.0.0/33", "is not a CIDR"),
        ("10.1.0.1/24", r"has host bits set \(the network is 10.1.0.0/24\)"),
        ("fd00::1/64", r"has host bits set \(the network is fd00::/64\)"),
    ],
)
def test_parse_subnet_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_subnet(text)


def test_parse_subnet_and_address() -> None:
    assert parse_subnet("10.1.0.0/24") == IPv4Network("10.1.0.0/24")
    assert parse_address("10.1.0.5") == IPv4Address("10.1.0.5")
    assert parse_address("fd00:0::05") == IPv6Address("fd00::5")
    with pytest.raises(InvalidRequest, match=r"^address 10.1.0.300 is not an IP address$"):
        parse_address("10.1.0.300")
    for bad in ("10.1.0.5/24", "", "fd00::1/64", "fd00::g"):
        with pytest.raises(InvalidRequest):
            parse_address(bad)


def test_pool_shape() -> None:
    assert pool_shape("10.1.0.0/24", "10.1.0.128/25") == (
        IPv4Network("10.1.0.0/24"),
        IPv4Network("10.1.0.128/25"),
    )
    with pytest.raises(InvalidRequest, match="ip range 10.2.0.0/25 is not inside subnet 10.1.0.0/24"):
        pool_shape("10.1.0.0/24", "10.2.0.0/25")
    with pytest.raises(InvalidRequest, match="too small"):
        pool_shape("10.1.0.0/31", None)


def test_find_overlap() -> None:
    pools = ["10.1.0.0/16", "10.3.0.0/24"]
    assert find_overlap(IPv4Network("10.1.5.0/24"), pools) == "10.1.0.0/16"
    assert find_overlap(IPv4Network("10.0.0.0/8"), pools) == "10.1.0.0/16"
    assert find_overlap(IPv4Network("10.2.0.0/16"), pools) is None


def test_plan_pool() -> None:
    existing = {"10.1.0.0/16": None, "10.2.0.0/24": "10.2.0.0/25"}
    assert plan_pool("10.5.0.0/24", None, "10.0.0.0/8", 24, existing) == ("10.5.0.0/24", None)
    assert plan_pool("10.2.0.0/24", "10.2.0.0/25", "x", 24, existing) == ("10.2.0.0/24", "10.2.0.0/25")
    with pytest.raises(Conflict, match=r"^subnet 10.1.0.0/24 overlaps pool 10.1.0.0/16$"):
        plan_pool("10.1.0.0/24", None, "10.0.0.0/8", 24, existing)
    with pytest.raises(Conflict, match="already exists with ip range 10.2.0.0/25, not"):
        plan_pool("10.2.0.0/24", None, "10.0.0.0/8", 24, existing)
    with pytest.raises(InvalidRequest, match="needs a subnet"):
        plan_pool(None, "10.9.0.0/25", "10.0.0.0/8", 24, existing)
    assert plan_pool(None, None, "10.0.0.0/8", 16, existing) == ("10.0.0.0/16", None)


def test_carve_subnet_skips_taken_and_aligns() -> None:
    assert carve_subnet("10.0.0.0/16", 24, []) == IPv4Network("10.0.0.0/24")
    assert carve_subnet("10.0.0.0/16", 24, ["10.0.0.0/24", "10.0.1.0/24"]) == IPv4Network("10.0.2.0/24")
    # A small pool in the way pushes the candidate to the next /24 boundary, not into its middle.
    assert carve_subnet("10.0.0.0/16", 24, ["10.0.0.64/26"]) == IPv4Network("10.0.1.0/24")
    # A bigger pool is jumped over in one step.
    assert carve_subnet("10.0.0.0/16", 24, ["10.0.0.0/20"]) == IPv4Network("10.0.16.0/24")
    # Pools outside the range do not matter; a pool covering the range exhausts it.
    assert carve_subnet("10.0.0.0/16", 24, ["192.168.0.0/16"]) == IPv4Network("10.0.0.0/24")
    with pytest.raises(Exhausted, match=r"^no free /24 subnet left in 10.0.0.0/16$"):
        carve_subnet("10.0.0.0/16", 24, ["10.0.0.0/8"])
    with pytest.raises(InvalidRequest):
        carve_subnet("10.0.0.0/16", 8, [])


def test_carve_subnet_fills_a_range_exactly() -> None:
    taken: list[str] = []
    for _ in range(16):
        taken.append(str(carve_subnet("10.0.0.0/24", 28, taken)))
    assert len(set(taken)) == 16
    with pytest.raises(Exhausted):
        carve_subnet("10.0.0.0/24", 28, taken)


def test_free_addresses_skip_network_and_broadcast() -> None:
    assert next_free_address("10.1.0.0/24", None, [], None) == "10.1.0.1"
    assert next_free_address("10.1.0.0/24", None, ["10.1.0.1", "10.1.0.2"], None) == "10.1.0.3"
    assert next_free_address("10.1.0.0/30", None, ["10.1.0.1"], None) == "10.1.0.2"
    with pytest.raises(Exhausted, match=r"^pool 10.1.0.0/30 has no free address$"):
        next_free_address("10.1.0.0/30", None, ["10.1.0.1", "10.1.0.2"], None)


def test_free_addresses_round_robin_and_wrap() -> None:
    used = ["10.1.0.1", "10.1.0.2"]
    assert next_free_address("10.1.0.0/24", None, used, "10.1.0.2") == "10.1.0.3"
    assert next_free_address("10.1.0.0/24", None, ["10.1.0.3"], "10.1.0.2") == "10.1.0.4"
    assert next_free_address("10.1.0.0/24", None, ["10.1.0.1"], "10.1.0.254") == "10.1.0.2"  # wraps
    assert next_free_address("10.1.0.0/24", None, [], "10.9.9.9") == "10.1.0.1"  # stale cursor
    found = free_addresses("10.1.0.0/24", None, address_ints(["10.1.0.5"]), "10.1.0.3", limit=3)
    assert [str(a) for a in found] == ["10.1.0.4", "10.1.0.6", "10.1.0.7"]


def test_free_addresses_in_ip_range() -> None:
    # The range's own first/last addresses are usable; the subnet's network and broadcast are not.
    got = [str(a) for a in free_addresses("10.1.0.0/24", "10.1.0.0/30", set(), None, 10)]
    assert got == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    got = [str(a) for a in free_addresses("10.1.0.0/24", "10.1.0.252/30", set(), None, 10)]
    assert got == ["10.1.0.252", "10.1.0.253", "10.1.0.254"]
    with pytest.raises(Exhausted, match="has no free address in ip range 10.1.0.16/31"):
        free_addresses("10.1.0.0/24", "10.1.0.16/31", address_ints(["10.1.0.16", "10.1.0.17"]))


def test_free_addresses_is_cheap_in_a_huge_pool() -> None:
    used = [str(IPv4Address("10.0.0.1") + i) for i in range(5000)]
    assert next_free_address("10.0.0.0/8", None, used, None) == "10.0.19.137"


def test_check_requested_address() -> None:
    assert check_requested_address("10.1.0.0/24", "10.1.0.7") == IPv4Address("10.1.0.7")
    for address, message in [
        ("10.1.1.7", "^address 10.1.1.7 is outside subnet 10.1.0.0/24$"),
        ("10.1.0.0", "is the network address of 10.1.0.0/24"),
        ("10.1.0.255", "is the broadcast address of 10.1.0.0/24"),
    ]:
        with pytest.raises(Conflict, match=message):
            check_requested_address("10.1.0.0/24", address)
    with pytest.raises(InvalidRequest, match="not an IP address"):
        check_requested_address("10.1.0.0/24", "10.1.0.300")
    with pytest.raises(Conflict, match="is outside subnet 10.1.0.0/24"):
        check_requested_address("10.1.0.0/24", "fd00::7")


def test_ipv6_pools_and_addresses() -> None:
    assert pool_shape("fd00:1::/64", "fd00:1::100/120") == (
        IPv6Network("fd00:1::/64"),
        IPv6Network("fd00:1::100/120"),
    )
    with pytest.raises(InvalidRequest, match="too small: pyoverlay needs at least a /126"):
        pool_shape("fd00:1::/127", None)
    with pytest.raises(InvalidRequest, match="is not inside subnet"):
        pool_shape("fd00:1::/64", "10.1.0.0/24")
    # IPv6 has no broadcast: the last address is a container's; the network address (anycast) is not
    assert [str(a) for a in free_addresses("fd00::/126", None, set(), None, 10)] == [
        "fd00::1",
        "fd00::2",
        "fd00::3",
    ]
    assert next_free_address("fd00::/64", None, ["fd00::1", "fd00::2"], "fd00::1") == "fd00::3"
    assert next_free_address("fd00::/64", None, [], "10.0.0.9") == "fd00::1"  # a cursor of another family
    assert address_ints(["fd00::1", "10.0.0.1"]) == {
        int(IPv6Address("fd00::1")),
        int(IPv4Address("10.0.0.1")),
    }
    with pytest.raises(Conflict, match="is the network address of fd00::/64"):
        check_requested_address("fd00::/64", "fd00::")
    assert check_requested_address("fd00::/126", "fd00::3") == IPv6Address("fd00::3")


def test_carve_ipv6_ignores_the_other_family() -> None:
    assert carve_subnet("fd70::/48", 64, ["10.0.0.0/8"]) == IPv6Network("fd70::/64")
    assert carve_subnet("fd70::/48", 64, ["fd70::/64", "fd70:0:0:1::/80"]) == IPv6Network("fd70:0:0:2::/64")
    assert carve_subnet("10.0.0.0/16", 24, ["fd70::/48"]) == IPv4Network("10.0.0.0/24")
    # overlap is checked within a family only
    assert find_overlap(IPv6Network("fd70::/64"), ["10.0.0.0/8", "fd70::/48"]) == "fd70::/48"
    assert find_overlap(IPv4Network("10.0.0.0/24"), ["fd70::/48"]) is None
    with pytest.raises(Conflict, match="overlaps pool fd70::/48"):
        plan_pool("fd70:0:0:5::/64", None, "fd70::/48", 64, {"fd70::/48": None})


def test_pick_vni() -> None:
    assert pick_vni([]) == VNI_MIN
    assert pick_vni([VNI_MIN, VNI_MIN + 1, VNI_MIN + 3]) == VNI_MIN + 2
    assert pick_vni([1, 2, 3]) == VNI_MIN
    assert pick_vni([VNI_MAX - 1], VNI_MAX - 1) == VNI_MAX
    with pytest.raises(Exhausted, match=f"no free VNI left in {VNI_MAX - 1}..{VNI_MAX}"):
        pick_vni([VNI_MAX - 1, VNI_MAX], VNI_MAX - 1)
