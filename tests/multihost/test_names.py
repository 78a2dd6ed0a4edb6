"""Names across hosts: each host's dockerd has the one setting `pyoverlay daemon-config` prints, every
host's /etc/resolv.conf names an upstream DNS server this test runs on the underlay (there is no
internet), and containers on different hosts find each other by name, alias and nothing more."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401
from tests.lab.names import lab_daemon_json, resolved, start_upstream
from tests.lab.system import wait_until as wait_for

pytestmark = pytest.mark.lab

SLEEP = ("sleep", "3600")
EXTERNAL = {"www.example.test": "192.0.2.10"}


def ip_of(h, container: str, network: str) -> str:
    out = h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
    return json.loads(out)[network]["IPAddress"]


def until_resolves(h, container: str, name: str, expected: list[str], timeout: float = 10.0) -> float:
    """Seconds until the container resolves name to exactly ``expected`` (sorted)."""
    start = time.monotonic()
    wait_for(lambda: resolved(h, container, name) == expected, timeout, f"{container}: {name} -> {expected}")
    return time.monotonic() - start


@pytest.fixture
def named_lab(make_lab) -> Iterator:  # noqa: F811
    config = lab_daemon_json()
    assert config == {"dns": ["169.254.53.53", "10.99.0.254"]}  # the name service, then the host's resolver
    lab = make_lab(3, etcd=True, daemon_json=config)
    upstream = start_upstream(lab, EXTERNAL)
    try:
        lab.start_agents()
        lab.hosts[0].create_network("ov", "--subnet", "10.60.0.0/24")
        lab.hosts[0].create_network("other", "--subnet", "10.61.0.0/24")
        for h in lab.hosts[1:]:
            wait_for(lambda h=h: {"ov", "other"} <= set(h.docker("network", "ls").stdout.split()), 20)
        yield lab
        for h in lab.hosts:
            print(f"--- {h.name}\n{h.agent_log_tail(30)}")
    finally:
        upstream.kill()
        upstream.wait()


def test_names_and_aliases_resolve_across_hosts_scoped_per_network(named_lab):
    h1, h2, h3 = named_lab.hosts
    image = named_lab.image
    h1.docker("run", "-d", "--name", "box1", "--network", "ov", image, *SLEEP)
    started = time.monotonic()
    h2.docker("run", "-d", "--name", "box2", "--network", "ov", "--network-alias", "web", image, *SLEEP)
    ran = time.monotonic() - started
    ip2 = ip_of(h2, "box2", "ov")
    took = until_resolves(h1, "box1", "box2", [ip2])
    print(f"box2 on h2 resolved on h1 {took * 1000:.0f} ms after `docker run -d` returned ({ran:.2f} s)")
    h1.docker("exec", "box1", "ping", "-c", "1", "-W", "2", "box2")  # the tutorial's last line
    h2.docker("exec", "box2", "ping", "-c", "1", "-W", "2", "box1")  # and back
    # one alias, two containers on two hosts: both addresses, from a third host
    h3.docker("run", "-d", "--name", "box3", "--network", "ov", "--network-alias", "web", image, *SLEEP)
    ip3 = ip_of(h3, "box3", "ov")
    until_resolves(h1, "box1", "web", sorted([ip2, ip3]))
    assert resolved(h1, "box1", "box3.ov") == [ip3]  # qualified by the network's name, as Docker does
    # scoping: a container only on "other" gets none of ov's names, and ov's containers none of its
    h3.docker("run", "-d", "--name", "box4", "--network", "other", image, *SLEEP)
    until_resolves(h2, "box2", "box4", [], timeout=3)
    assert resolved(h3, "box4", "box1") == [] and resolved(h3, "box4", "web") == []
    h3.docker("network", "connect", "--alias", "late", "other", "box3")  # joins other: sees box4 now
    until_resolves(h3, "box3", "box4", [ip_of(h3, "box4", "other")])
    until_resolves(h3, "box4", "late", [ip_of(h3, "box3", "other")])
    # names of the host's own resolvers still work: the test's upstream, through the name service
    assert resolved(h1, "box1", "www.example.test") == ["192.0.2.10"]
    assert resolved(h3, "box4", "www.example.test") == ["192.0.2.10"]


def test_names_follow_stop_rename_and_disconnect(named_lab):
    h1, h2, _ = named_lab.hosts
    image = named_lab.image
    h1.docker("run", "-d", "--name", "box1", "--network", "ov", image, *SLEEP)
    h2.docker("run", "-d", "--name", "box2", "--network", "ov", "--network-alias", "web", image, *SLEEP)
    ip2 = ip_of(h2, "box2", "ov")
    until_resolves(h1, "box1", "box2", [ip2])
    h2.docker("rename", "box2", "renamed")
    took = until_resolves(h1, "box1", "renamed", [ip2])
    assert resolved(h1, "box1", "box2") == []
    print(f"rename on h2 seen on h1 after {took * 1000:.0f} ms")
    h2.docker("network", "disconnect", "ov", "renamed")
    took = until_resolves(h1, "box1", "renamed", [])
    assert resolved(h1, "box1", "web") == []
    print(f"disconnect on h2: the name gone on h1 after {took * 1000:.0f} ms")
    h2.docker("network", "connect", "ov", "renamed")
    ip2 = ip_of(h2, "renamed", "ov")
    until_resolves(h1, "box1", "renamed", [ip2])
    h2.docker("stop", "-t", "0", "renamed")
    took = until_resolves(h1, "box1", "renamed", [])
    print(f"stop on h2: the name gone on h1 after {took * 1000:.0f} ms")


def test_while_the_agent_is_stopped_other_names_still_resolve(named_lab):
    """The daemon setting names the host's resolver after the name service: Docker asks it when the
    name service does not answer. Names of other hosts come back with the agent."""
    h1, h2, _ = named_lab.hosts
    image = named_lab.image
    h1.docker("run", "-d", "--name", "box1", "--network", "ov", "--network-alias", "web", image, *SLEEP)
    h2.docker("run", "-d", "--name", "box2", "--network", "ov", "--network-alias", "web", image, *SLEEP)
    ip1, ip2 = ip_of(h1, "box1", "ov"), ip_of(h2, "box2", "ov")
    until_resolves(h1, "box1", "box2", [ip2])
    # Docker answers a name it holds itself and never forwards it: an alias held on this host gives
    # this host's holders only (Docker's own overlay behaves alike without swarm's records)
    assert resolved(h1, "box1", "web") == [ip1]
    h1.stop_agent()
    assert resolved(h1, "box1", "www.example.test") == ["192.0.2.10"]
    assert resolved(h1, "box1", "box2") == []
    h1.start_agent()
    until_resolves(h1, "box1", "box2", [ip2])
