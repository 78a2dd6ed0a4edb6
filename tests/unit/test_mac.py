"""The MAC an endpoint gets when the user sets none: from its IPv4 address, else from its ID."""

import ipaddress

import pytest

from plugin.services.network import mac_for, mac_for_address


@pytest.mark.parametrize(
    "address, mac",
    [
        ("10.30.0.5/24", "02:42:0a:1e:00:05"),
        ("192.168.255.1/16", "02:42:c0:a8:ff:01"),
        ("172.17.0.2/16", "02:42:ac:11:00:02"),  # what Docker's bridge driver gives this address
    ],
)
def test_mac_is_02_42_and_the_four_address_bytes(address: str, mac: str) -> None:
    assert mac_for_address(ipaddress.IPv4Interface(address)) == mac
    assert mac_for_address(ipaddress.IPv4Interface(address).ip) == mac  # the prefix plays no part


def test_macs_from_addresses_are_distinct_unicast_and_locally_administered() -> None:
    network = ipaddress.IPv4Network("10.40.0.0/22")
    macs = {mac_for_address(ip) for ip in network}
    assert len(macs) == network.num_addresses
    assert {int(mac[:2], 16) & 0b11 for mac in macs} == {0b10}  # unicast, locally administered


def test_mac_from_an_endpoint_id_is_stable_and_differs_between_ids() -> None:
    one, other = "ab" * 32, "cd" * 32
    assert mac_for(one) == mac_for(one) != mac_for(other)
    assert int(mac_for(one)[:2], 16) & 0b11 == 0b10
