"""`pyoverlay expose` across three lab hosts: h1's own address on network ov reaches containers on h2
and h3 and they reach it, also after h1's agent restarts; `hide` takes it away and frees the address;
removing the network removes the exposure."""

from __future__ import annotations

import json
import time

import pytest

from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401
from tests.lab.system import wait_until as wait_for

from .test_overlay import SLEEP, converge_ping, create_everywhere, ip_of, lab3, networks, ping  # noqa: F401

pytestmark = pytest.mark.lab


def pyoverlay(h, *args: str):
    """The CLI inside the host, with its agent's environment (STATE_DIR, ETCD_ENDPOINTS)."""
    return h.run([str(h.lab.agent_command[0]), *args], env=h.agent_env(), check=False)


def host_reaches(h, target: str) -> bool:
    return h.ping(target, check=False).returncode == 0


def bridge_has(h, address: str) -> bool:
    return f" {address} " in h.run(["ip", "-4", "-o", "addr", "show"]).stdout


def test_expose_and_hide_with_traffic_both_ways(lab3):  # noqa: F811
    h1, h2, h3 = lab3.hosts
    create_everywhere(lab3, "ov", "--subnet", "10.60.0.0/24")
    h2.docker("run", "-d", "--name", "box2", "--network", "ov", lab3.image, *SLEEP)
    h3.docker("run", "-d", "--name", "box3", "--network", "ov", lab3.image, *SLEEP)
    ip2, ip3 = ip_of(h2, "box2", "ov"), ip_of(h3, "box3", "ov")
    assert not host_reaches(h1, ip2)  # nothing of ov on h1's host yet

    done = pyoverlay(h1, "expose", "ov")
    assert done.returncode == 0, done.stderr
    cidr = done.stdout.strip()
    exposed = cidr.split("/")[0]
    assert cidr.endswith("/24") and exposed not in (ip2, ip3)
    assert pyoverlay(h1, "expose", "ov").stdout.strip() == cidr  # again: the same address
    owner = lab3.etcdctl("get", "--print-value-only", f"/pyoverlay/v1/addresses/10.60.0.0/24/{exposed}")
    assert json.loads(owner.stdout)["owner"].startswith("host-")  # reserved: never given to a container

    def both_ways() -> None:
        wait_for(lambda: host_reaches(h1, ip2), what="h1 -> box2")
        wait_for(lambda: host_reaches(h1, ip3), what="h1 -> box3")
        converge_ping(h2, "box2", exposed)
        converge_ping(h3, "box3", exposed)

    both_ways()
    h1.stop_agent()
    h1.start_agent(extra_env={"HOST_TTL": "4"})
    both_ways()
    # a box on h1 itself reaches it too, across h1's bridge only
    h1.docker("run", "-d", "--name", "box1", "--network", "ov", lab3.image, *SLEEP)
    converge_ping(h1, "box1", exposed)

    hidden = pyoverlay(h1, "hide", "ov")
    assert hidden.returncode == 0 and hidden.stdout.startswith(f"{cidr} is no longer"), hidden.stderr
    wait_for(lambda: not bridge_has(h1, cidr), what="address off h1's bridge")
    assert not host_reaches(h1, ip2) and not host_reaches(h1, ip3)
    assert ping(h2, "box2", exposed, check=False).returncode != 0
    owners = lab3.etcdctl("get", "--prefix", "--keys-only", "/pyoverlay/v1/addresses/10.60.0.0/24/").stdout
    assert f"/{exposed}" not in owners  # free again
    h3.docker("run", "-d", "--name", "taker", "--network", "ov", "--ip", exposed, lab3.image, *SLEEP)
    # box2's ARP cache still maps the address to the exposure's MAC until it expires and is probed again
    # (the taker's MAC is random here; with MACs derived from the address it would be the same one)
    started = time.monotonic()
    wait_for(lambda: ping(h2, "box2", exposed, check=False).returncode == 0, 90, "box2 -> taker")
    print(f"box2 reached the container that took the hidden address after {time.monotonic() - started:.1f} s")

    # exposed again, then the network goes: the exposure goes with it (it keeps no network alive)
    again = pyoverlay(h1, "expose", "ov").stdout.strip()
    wait_for(lambda: bridge_has(h1, again), what="address on h1's bridge again")
    h1.docker("rm", "-f", "box1")
    h2.docker("rm", "-f", "box2")
    h3.docker("rm", "-f", "box3", "taker")
    h2.docker("network", "rm", "ov")
    for h in (h1, h3):
        wait_for(lambda h=h: "ov" not in networks(h), what=f"ov removed on {h.name}")
    wait_for(lambda: not bridge_has(h1, again), what="address gone with the network")
    endpoints = lab3.etcdctl("get", "--prefix", "--keys-only", "/pyoverlay/v1/topology/endpoints/").stdout
    assert endpoints.split() == []
    print(json.dumps({"exposed": cidr, "again": again, "boxes": [ip2, ip3]}))
