"""Stable MACs: an endpoint's MAC comes from its IPv4 address unless the user sets one, and a joining
endpoint is announced, so a container that comes back with its IP (reconnected, or replaced with --ip on
another host) is reached again at once: its neighbours' ARP caches never black-hole it."""

from __future__ import annotations

import json
import math
import time

import pytest

from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401
from tests.multihost.test_overlay import SLEEP, converge_ping, create_everywhere, ip_of

pytestmark = pytest.mark.lab

SUBNET = "10.52.0.0/24"
BOUND = 5.0  # seconds; the point is "at once" (measured and printed), the bound only catches a black hole
USER_MAC = "02:aa:bb:cc:dd:0e"


def derived_mac(ip: str) -> str:
    return ":".join(f"{b:02x}" for b in (0x02, 0x42, *map(int, ip.split("."))))


def macs_of(h, container: str, network: str) -> tuple[str, str]:
    """(the MAC Docker reports, the MAC of eth0 inside the container)."""
    reported = json.loads(h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout)
    ip = reported[network]["IPAddress"]
    # a reconnected network's interface is not eth0 any more: the one holding the address
    lines = h.docker("exec", container, "ip", "-o", "-4", "addr", "show").stdout.splitlines()
    [ifname] = [line.split()[1] for line in lines if f" {ip}/" in line]
    inside = h.docker("exec", container, "cat", f"/sys/class/net/{ifname}/address").stdout.strip()
    return reported[network]["MacAddress"], inside


def seconds_to_reach(h, container: str, target: str, limit: float = 30.0) -> float:
    """Seconds until one echo from container to target is answered (inf if none within limit)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if h.docker("exec", container, "ping", "-c", "1", "-W", "1", target, check=False).returncode == 0:
            return time.monotonic() - start
    return math.inf


def datapath(h, container: str, ip: str) -> str:
    """For a failure's message: the container's ARP entry for ip, and h's FDB and neighbour entries."""
    inside = h.docker("exec", container, "ip", "neigh", "show", ip, check=False).stdout.strip()
    fdb = h.in_networks(["bridge", "fdb", "show"])
    neigh = h.in_networks(["ip", "neigh", "show"])
    return f"{container}'s ARP entry: {inside!r}\n{h.name} FDB:\n{fdb}{h.name} neighbours:\n{neigh}"


def dump_logs(lab) -> None:
    for h in lab.hosts:
        print(f"--- {h.name}\n{h.agent_log_tail(30)}")


def test_reconnect_with_the_same_ip_keeps_the_mac_and_is_reached_at_once(make_lab):  # noqa: F811
    lab = make_lab(2, etcd=True)
    lab.start_agents()
    h1, h2 = lab.hosts
    try:
        create_everywhere(lab, "mac", "--subnet", SUBNET)
        h1.docker("run", "-d", "--name", "box1", "--network", "mac", lab.image, *SLEEP)
        h2.docker("run", "-d", "--name", "box2", "--network", "mac", lab.image, *SLEEP)
        ip2 = ip_of(h2, "box2", "mac")
        assert macs_of(h2, "box2", "mac") == (derived_mac(ip2), derived_mac(ip2))
        converge_ping(h1, "box1", ip2)  # box1's ARP cache now holds ip2's MAC

        h2.docker("network", "disconnect", "mac", "box2")
        h2.docker("network", "connect", "--ip", ip2, "mac", "box2")
        took = seconds_to_reach(h1, "box1", ip2)
        print(f"box1 reached box2 {took:.2f} s after `docker network connect` returned")
        assert took < BOUND, datapath(h1, "box1", ip2)
        assert macs_of(h2, "box2", "mac") == (derived_mac(ip2), derived_mac(ip2))
    finally:
        dump_logs(lab)


def test_replaced_on_another_host_with_its_ip_and_a_user_set_mac(make_lab):  # noqa: F811
    lab = make_lab(3, etcd=True)
    lab.start_agents()
    h1, h2, h3 = lab.hosts
    try:
        create_everywhere(lab, "mac", "--subnet", SUBNET)
        h1.docker("run", "-d", "--name", "box1", "--network", "mac", lab.image, *SLEEP)
        h2.docker("run", "-d", "--name", "box2", "--network", "mac", lab.image, *SLEEP)
        ip2 = ip_of(h2, "box2", "mac")
        converge_ping(h1, "box1", ip2)

        # the same IP on another host gets the same MAC: box1's ARP entry stays right
        h2.docker("rm", "-f", "box2")
        h3.docker("run", "-d", "--name", "box3", "--network", "mac", "--ip", ip2, lab.image, *SLEEP)
        assert macs_of(h3, "box3", "mac") == (derived_mac(ip2), derived_mac(ip2))
        took = seconds_to_reach(h1, "box1", ip2)
        print(f"box1 reached box3 (box2's IP, other host) {took:.2f} s after `docker run` returned")
        assert took < BOUND, datapath(h1, "box1", ip2)

        # a MAC the user sets is kept; the IP now has another MAC, which h1 announces to box1
        h3.docker("rm", "-f", "box3")
        h3.docker(
            "run", "-d", "--name", "box4", "--network", "mac", "--ip", ip2, "--mac-address", USER_MAC,
            lab.image, *SLEEP,
        )  # fmt: skip
        assert macs_of(h3, "box4", "mac") == (USER_MAC, USER_MAC)
        took = seconds_to_reach(h1, "box1", ip2)
        print(f"box1 reached box4 (box2's IP, user-set MAC) {took:.2f} s after `docker run` returned")
        assert took < BOUND, datapath(h1, "box1", ip2)
        neighbours = h1.docker("exec", "box1", "ip", "neigh", "show", ip2).stdout
        assert USER_MAC in neighbours, datapath(h1, "box1", ip2)
    finally:
        dump_logs(lab)
