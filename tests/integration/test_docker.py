"""One host, a real dockerd, the real agent: what a user types, on both stores."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time

import pytest

from kvstore import NotFound
from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401

pytestmark = pytest.mark.integration

# host liveness: registrations and the heartbeat records `pyoverlay status` reads, kept per live host
LIVENESS = ("/pyoverlay/v1/hosts/", "/pyoverlay/v1/hosts-seen/")


@pytest.fixture(params=["embedded", "etcd"])
def host(request, make_lab):  # noqa: F811
    lab = make_lab(1, etcd=request.param == "etcd")
    h = lab.hosts[0]
    h.start_agent()
    yield h
    print(h.agent_log_tail(60))


def ip_of(h, container: str, network: str) -> str:
    out = h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
    return json.loads(out)[network]["IPAddress"]


def in_container(h, container: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return h.docker("exec", container, *cmd, check=check)


def pyoverlay_leftovers(h, subnets: tuple[str, ...] = ()) -> list[str]:
    deadline = time.monotonic() + 10  # DeleteEndpoint leaves the kernel's deletion of a veth to a thread
    while True:
        links = h.run(["ip", "-br", "link"]).stdout.splitlines()
        found = [
            line.split()[0]
            for line in links
            if line.startswith(("pobr", "povx", "poh", "poc", "podel", "poex"))
        ]
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    rules = h.run(["iptables", "-w", "-S", "FORWARD"]).stdout.splitlines()
    found += [n for n in h.run(["ip", "netns", "list"]).stdout.split() if n.startswith("pyoverlay-")]
    found += [rule for rule in rules if "pyoverlay" in rule]
    if h.lab.etcd_endpoint:
        keys = h.lab.etcdctl("get", "--prefix", "--keys-only", "/pyoverlay/v1/").stdout.split()
        found += [k for k in keys if not k.startswith(LIVENESS) and k != "/pyoverlay/v1/pools-index"]
    else:
        from kvstore import open_store

        store = open_store([], str(h.workdir / "state"))
        found += [n.network_id for n in store.list_networks()] + [
            e.endpoint_id for e in store.list_endpoints()
        ]
        for subnet in subnets:
            with contextlib.suppress(NotFound):
                found.append(f"pool {store.get_pool(subnet).subnet}")
        store.close()
    return found


def test_network_containers_talk_by_ip_and_name(host):
    h, image = host, host.lab.image
    h.create_network(
        "net1", "--subnet", "10.40.0.0/24", "--gateway", "10.40.0.254", "--ip-range", "10.40.0.128/25"
    )
    inspect = json.loads(h.docker("network", "inspect", "net1").stdout)[0]
    assert inspect["IPAM"]["Config"][0]["Gateway"] == "10.40.0.254"
    h.docker("run", "-d", "--name", "ca", "--network", "net1", image, "sleep", "600")
    h.docker("run", "-d", "--name", "cb", "--network", "net1", "--ip", "10.40.0.10", image, "sleep", "600")
    a_ip = ip_of(h, "ca", "net1")
    assert a_ip.startswith("10.40.0.") and int(a_ip.split(".")[-1]) >= 128, a_ip  # from --ip-range
    assert ip_of(h, "cb", "net1") == "10.40.0.10"
    in_container(h, "ca", "ping", "-c", "1", "-W", "3", "10.40.0.10")
    in_container(h, "ca", "ping", "-c", "1", "-W", "3", "cb")  # Docker's embedded DNS
    in_container(h, "cb", "ping", "-c", "1", "-W", "3", "ca")
    assert in_container(h, "ca", "cat", "/sys/class/net/eth0/mtu").stdout.strip() == "1450"
    # outbound through docker_gwbridge: the lab's underlay gateway answers
    in_container(h, "ca", "ping", "-c", "1", "-W", "3", h.lab.underlay_address)

    # connect / disconnect a container that started elsewhere
    h.docker("run", "-d", "--name", "cc", image, "sleep", "600")
    h.docker("network", "connect", "net1", "cc")
    in_container(h, "cc", "ping", "-c", "1", "-W", "3", "ca")
    h.docker("network", "disconnect", "net1", "cc")
    assert in_container(h, "cc", "ping", "-c", "1", "-W", "1", a_ip, check=False).returncode != 0

    # a second network is isolated from the first
    h.create_network("net2")
    h.docker("run", "-d", "--name", "cd", "--network", "net2", image, "sleep", "600")
    assert in_container(h, "cd", "ping", "-c", "1", "-W", "1", a_ip, check=False).returncode != 0

    h.docker("rm", "-f", "ca", "cb", "cc", "cd")
    h.docker("network", "rm", "net1", "net2")
    assert pyoverlay_leftovers(h, ("10.40.0.0/24", "10.200.0.0/24")) == []


def test_mtu_option_and_address_reuse(host):
    h, image = host, host.lab.image
    h.create_network("small", "--subnet", "10.41.0.0/29", "-o", "com.docker.network.driver.mtu=1400")
    names = [f"s{i}" for i in range(5)]  # .1 is the gateway: .2-.6 fill the /29
    for name in names:
        h.docker("run", "-d", "--name", name, "--network", "small", image, "sleep", "600")
    assert in_container(h, "s0", "cat", "/sys/class/net/eth0/mtu").stdout.strip() == "1400"
    full = h.docker("run", "-d", "--name", "s5", "--network", "small", image, "sleep", "600", check=False)
    assert full.returncode != 0 and "no free address" in full.stderr, full.stderr
    h.docker("rm", "-f", "s5", check=False)
    freed = ip_of(h, "s2", "small")
    h.docker("rm", "-f", "s2")
    h.docker("run", "-d", "--name", "s6", "--network", "small", image, "sleep", "600")
    assert ip_of(h, "s6", "small") == freed
    h.docker("rm", "-f", "s0", "s1", "s3", "s4", "s6")
    h.docker("network", "rm", "small")
    assert pyoverlay_leftovers(h, ("10.41.0.0/29",)) == []


def test_docker_default_ipam(host):
    h = host
    made = h.docker("network", "create", "-d", "pyoverlay", "--subnet", "10.42.0.0/24", "plain", check=False)
    if h.lab.etcd_endpoint:
        assert made.returncode != 0
        assert "docker network create -d pyoverlay --ipam-driver pyoverlay" in made.stderr, made.stderr
    else:
        assert made.returncode == 0, made.stderr
        h.docker("run", "-d", "--name", "p1", "--network", "plain", h.lab.image, "sleep", "600")
        h.docker("run", "-d", "--name", "p2", "--network", "plain", h.lab.image, "sleep", "600")
        in_container(h, "p1", "ping", "-c", "1", "-W", "3", "p2")
        h.docker("rm", "-f", "p1", "p2")
        h.docker("network", "rm", "plain")
    assert pyoverlay_leftovers(h) == []


def test_agent_restart_keeps_containers_talking(host):
    h, image = host, host.lab.image
    h.create_network("net1")
    h.docker("run", "-d", "--name", "ca", "--network", "net1", image, "sleep", "600")
    h.docker("run", "-d", "--name", "cb", "--network", "net1", image, "sleep", "600")
    links_before = h.run(["ip", "-o", "link"]).stdout
    h.kill_agent()
    in_container(h, "ca", "ping", "-c", "1", "-W", "3", "cb")  # the kernel carries packets, not the agent
    h.start_agent()
    assert h.run(["ip", "-o", "link"]).stdout == links_before  # adopted, not recreated
    h.docker("run", "-d", "--name", "cc", "--network", "net1", image, "sleep", "600")
    in_container(h, "cc", "ping", "-c", "1", "-W", "3", "ca")
    h.docker("restart", "-t", "0", "cb")
    deadline = time.monotonic() + 10
    while in_container(h, "ca", "ping", "-c", "1", "-W", "1", "cb", check=False).returncode != 0:
        assert time.monotonic() < deadline, "cb unreachable after its restart"
    h.docker("rm", "-f", "ca", "cb", "cc")
    h.docker("network", "rm", "net1")
    assert pyoverlay_leftovers(h, ("10.200.0.0/24",)) == []
