"""The name service's address on the loopback device of a throwaway namespace: added once, bindable,
removed again; a bad address is refused naming the device."""

import pytest

from driver import DataplaneError
from driver.service_address import ensure_service_address, remove_service_address

from .nsutil import in_netns

pytestmark = pytest.mark.netlink


def addresses(ns: str) -> list[str]:
    return in_netns(ns, "ip", "-o", "-4", "addr", "show", "dev", "lo").stdout.split("\n")


def test_the_service_address_is_on_lo_once_and_goes_again(ns: str):
    in_netns(ns, "ip", "link", "set", "lo", "up")
    ensure_service_address("169.254.53.53", netns=ns)
    ensure_service_address("169.254.53.53", netns=ns)  # idempotent
    lines = [line for line in addresses(ns) if "169.254.53.53/32" in line]
    assert len(lines) == 1 and "lo:pyoverlay" in lines[0]
    # something in the namespace can listen on it and be reached there
    probe = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.bind(('169.254.53.53', 53)); c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "c.sendto(b'x', ('169.254.53.53', 53)); print(s.recvfrom(1)[0].decode())"
    )
    assert in_netns(ns, "python3", "-c", probe).stdout.strip() == "x"
    remove_service_address("169.254.53.53", netns=ns)
    remove_service_address("169.254.53.53", netns=ns)
    assert not any("169.254.53.53" in line for line in addresses(ns))


def test_a_bad_service_address_is_refused(ns: str):
    with pytest.raises(DataplaneError, match="lo: service address 'resolver' is not IPv4"):
        ensure_service_address("resolver", netns=ns)
