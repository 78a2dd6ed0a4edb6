"""IPv6 across hosts on every engine of the matrix: `docker network create --ipv6 --subnet v4 --subnet v6`
gives containers both addresses, ping6 crosses hosts by address and by name (AAAA from the name service),
--ipv6 without a v6 subnet carves a ULA /64, bad IPv6 input is refused and leaves nothing behind, and
IPv6-only networks (`--ipv4=false`) work on 28 and are refused with the reason on 20.10 and 26."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from ipaddress import ip_network

import pytest

from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401
from tests.lab.names import lab_daemon_json, start_upstream
from tests.lab.system import wait_until

pytestmark = pytest.mark.lab

SLEEP = ("sleep", "600")


@pytest.fixture
def lab6(make_lab) -> Iterator:  # noqa: F811
    lab = make_lab(2, etcd=True, daemon_json=lab_daemon_json())
    upstream = start_upstream(lab, {})
    try:
        lab.start_agents()
        yield lab
        for h in lab.hosts:
            print(f"--- {h.name}\n{h.agent_log_tail(30)}")
    finally:
        upstream.kill()
        upstream.wait()


def addresses(h, container: str, network: str) -> tuple[str, str]:
    """(IPv4, IPv6) of the container on the network, as Docker reports them."""
    settings = json.loads(h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout)
    return settings[network]["IPAddress"], settings[network]["GlobalIPv6Address"]


def ping6(h, container: str, target: str) -> None:
    out = h.docker("exec", container, "ping", "-6", "-c", "2", "-W", "2", target, check=False)
    assert out.returncode == 0, f"{container} -> {target}: {out.stdout}{out.stderr}\n{h.agent_log_tail()}"


def aaaa(h, container: str, name: str) -> list[str]:
    out = h.docker("exec", container, "nslookup", "-type=aaaa", name, check=False, timeout=30).stdout
    # after the server's own lines ("Non-authoritative answer:" only on some busybox builds)
    answer = out.split("answer:", 1)[-1] if "answer:" in out else out.split("\n\n", 1)[-1]
    return sorted(set(re.findall(r"Address:\s*([0-9a-f:]+:[0-9a-f]*)\s*$", answer, re.M)))


def pools(lab) -> str:
    return lab.etcdctl("get", "--prefix", "--keys-only", "/pyoverlay/v1/pools/").stdout


def networks(h) -> set[str]:
    return set(h.docker("network", "ls", "--format", "{{.Name}}").stdout.split())


def test_dual_stack_across_hosts(lab6):
    h1, h2 = lab6.hosts
    h1.create_network("ov6", "--ipv6", "--subnet", "10.70.0.0/24", "--subnet", "fd00:70::/64")
    wait_until(lambda: "ov6" in networks(h2), 30, "ov6 on h2")
    for h in lab6.hosts:
        # what dockerd >= 27 sets once it turns IPv6 forwarding on (a bridge network with --ipv6): the
        # network's traffic must not depend on the host's ip6tables; 20.10 (ip6tables experimental) leaves it
        h.run(["ip6tables", "-w", "-P", "FORWARD", "DROP"])
    h1.docker("run", "-d", "--init", "--name", "box1", "--network", "ov6", lab6.image, *SLEEP)
    h2.docker("run", "-d", "--init", "--name", "box2", "--network", "ov6", lab6.image, *SLEEP)
    (v4_1, v6_1), (v4_2, v6_2) = addresses(h1, "box1", "ov6"), addresses(h2, "box2", "ov6")
    assert (v4_1, v6_1) == ("10.70.0.2", "fd00:70::2")  # h1's first blocks: 10.70.0.0/28, fd00:70::/122
    # h2 hands out addresses of blocks of its own (a /28 and a /122), never of h1's
    assert ip_network(f"{v4_2}/28", strict=False) != ip_network("10.70.0.0/28"), v4_2
    assert ip_network(f"{v6_2}/122", strict=False) != ip_network("fd00:70::/122"), v6_2
    ping6(h1, "box1", v6_2)
    ping6(h2, "box2", v6_1)
    h1.docker("exec", "box1", "ping", "-c", "1", "-W", "2", v4_2)  # and IPv4 beside it
    # the remote address is a permanent neighbour entry on the VXLAN device, the MAC the IPv4-derived one
    assert f"{v6_2} dev povx" in h1.in_networks(["ip", "-6", "neigh", "show", "nud", "permanent"])
    # by name: AAAA from the name service (Docker's embedded DNS forwards what it does not hold)
    wait_until(lambda: aaaa(h1, "box1", "box2") == [v6_2], 10, "AAAA box2 on h1")
    ping6(h1, "box1", "box2")
    ping6(h2, "box2", "box1.ov6")
    engine = ".".join(map(str, h1.engine.release))
    policy = h1.run(["ip6tables", "-S", "FORWARD"]).stdout
    print(f"docker {engine}: ip6tables FORWARD\n{policy}")
    # the policy drops, and no rule of ours is needed: bridged frames stay in the network's namespace
    assert "-P FORWARD DROP" in policy and "pyoverlay" not in policy


def test_default_v6_pool_bad_input_and_ipv6_only(lab6):
    h1, h2 = lab6.hosts
    h1.create_network("auto6", "--ipv6")
    config = json.loads(h1.docker("network", "inspect", "auto6").stdout)[0]["IPAM"]["Config"]
    assert [c["Subnet"] for c in config] == ["10.200.0.0/24", "fd70:796f:7600::/64"]
    h1.create_network("auto6b", "--ipv6")
    config = json.loads(h1.docker("network", "inspect", "auto6b").stdout)[0]["IPAM"]["Config"]
    assert config[1]["Subnet"] == "fd70:796f:7600:1::/64"  # cluster-wide: the next /64
    before = pools(lab6)
    for options, message in [
        (("--subnet", "10.71.0.0/24", "--subnet", "fd00:71::/127"), "too small"),
        (
            ("--subnet", "10.71.0.0/24", "--subnet", "fd70:796f:7600::/48"),
            "overlaps pool fd70:796f:7600::/64",
        ),
    ]:
        out = h1.create_network("bad6", "--ipv6", *options, check=False)
        assert out.returncode != 0 and message in out.stderr, out.stderr
        assert "bad6" not in networks(h1) and pools(lab6) == before  # nothing left behind
    if h1.engine.ipv6_only_networks:
        h1.create_network("only6", "--ipv4=false", "--ipv6", "--subnet", "fd00:72::/64")
        wait_until(lambda: "only6" in networks(h2), 30, "only6 on h2")
        h1.docker("run", "-d", "--init", "--name", "six1", "--network", "only6", lab6.image, *SLEEP)
        h2.docker("run", "-d", "--init", "--name", "six2", "--network", "only6", lab6.image, *SLEEP)
        v4, six2 = addresses(h2, "six2", "only6")
        assert v4 == "" and ip_network(f"{six2}/122", strict=False) != ip_network(
            "fd00:72::/122"
        )  # h2's block
        mac = json.loads(h2.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", "six2").stdout)
        last4 = ip_network(six2).network_address.packed[-4:]
        assert mac["only6"]["MacAddress"] == "02:42:" + ":".join(
            f"{b:02x}" for b in last4
        )  # from the address
        ping6(h1, "six1", six2)
        ping6(h2, "six2", "six1")
    else:
        out = h1.create_network(
            "only6",
            "--ipv6",
            "-o",
            "com.docker.network.enable_ipv4=false",
            "--subnet",
            "fd00:72::/64",
            check=False,
        )
        assert out.returncode != 0 and "IPv6-only networks need Docker 28 or later" in out.stderr, out.stderr
        assert "only6" not in networks(h1) and pools(lab6) == before
