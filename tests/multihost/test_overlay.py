"""Many hosts, one network: each host a namespace with its own dockerd and agent, etcd on the underlay."""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest

from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401
from tests.lab.system import wait_until as wait_for

pytestmark = pytest.mark.lab

SLEEP = ("sleep", "3600")

# host liveness: registrations and the heartbeat records `pyoverlay status` reads, kept per live host
LIVENESS = ("/pyoverlay/v1/hosts/", "/pyoverlay/v1/hosts-seen/")


def networks(h) -> dict[str, dict]:
    out = h.docker("network", "ls", "--filter", "driver=pyoverlay", "--format", "{{.Name}}").stdout.split()
    if not out:
        return {}
    return {n["Name"]: n for n in json.loads(h.docker("network", "inspect", *out).stdout)}


def create_everywhere(lab, name: str, *args: str) -> None:
    lab.hosts[0].create_network(name, *args)
    for h in lab.hosts[1:]:
        wait_for(lambda h=h: name in networks(h), what=f"{name} on {h.name}")


def ip_of(h, container: str, network: str) -> str:
    out = h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
    return json.loads(out)[network]["IPAddress"]


def ping(h, container: str, target: str, count: int = 1, check: bool = True):
    return h.docker("exec", container, "ping", "-c", str(count), "-W", "2", target, check=check)


def converge_ping(h, container: str, target: str, timeout: float = 10.0) -> None:
    wait_for(
        lambda: ping(h, container, target, check=False).returncode == 0, timeout, f"{container} -> {target}"
    )


@pytest.fixture
def lab3(make_lab):  # noqa: F811
    lab = make_lab(3, etcd=True)
    lab.start_agents(extra_env={"HOST_TTL": "4"})
    yield lab
    for h in lab.hosts:
        print(f"--- {h.name}\n{h.agent_log_tail(40)}")


def test_network_appears_everywhere_and_containers_talk_across_hosts(lab3):
    h1, h2, h3 = lab3.hosts
    create_everywhere(lab3, "ov", "--subnet", "10.50.0.0/24", "--gateway", "10.50.0.1")
    for h in (h2, h3):
        config = networks(h)["ov"]["IPAM"]["Config"][0]
        assert config["Subnet"] == "10.50.0.0/24" and config["Gateway"] == "10.50.0.1"
    sysctl = ("--sysctl", "net.ipv4.icmp_echo_ignore_broadcasts=0")
    h1.docker("run", "-d", "--name", "box1", "--network", "ov", *sysctl, lab3.image, *SLEEP)
    h2.docker("run", "-d", "--name", "box2", "--network", "ov", *sysctl, lab3.image, *SLEEP)
    h3.docker("run", "-d", "--name", "box3", "--network", "ov", *sysctl, lab3.image, *SLEEP)
    ip1, ip2, ip3 = ip_of(h1, "box1", "ov"), ip_of(h2, "box2", "ov"), ip_of(h3, "box3", "ov")
    assert len({ip1, ip2, ip3}) == 3
    converge_ping(h1, "box1", ip2)
    converge_ping(h2, "box2", ip1)
    converge_ping(h3, "box3", ip1)
    # broadcast crosses hosts: every other box answers a ping to the subnet's broadcast address
    out = ping(h1, "box1", "10.50.0.255", count=3, check=False).stdout
    assert ip2 in out and ip3 in out, out

    # every endpoint record carries its container's name, learned from its own daemon
    def names():
        keys = lab3.etcdctl("get", "--prefix", "/pyoverlay/v1/topology/endpoints/").stdout
        return {json.loads(line)["container_name"] for line in keys.splitlines() if line.startswith("{")}

    wait_for(lambda: names() >= {"box1", "box2", "box3"}, what="container names in the store")

    # removing a container anywhere removes it from every host's tables
    h2.docker("rm", "-f", "box2")
    for h in (h1, h3):
        wait_for(
            lambda h=h: ip2 not in h.in_networks(["ip", "neigh", "show", "nud", "permanent"]),
            what=f"{ip2} gone from {h.name}",
        )


def test_network_rm_leaves_while_others_use_it_and_removes_everywhere_when_last(lab3):
    h1, h2, h3 = lab3.hosts
    create_everywhere(lab3, "gone")
    h1.docker("run", "-d", "--name", "keeper", "--network", "gone", lab3.image, *SLEEP)
    # Docker ignores DeleteNetwork errors, so h2 can only leave while h1 still has a container on it
    h2.docker("network", "rm", "gone")
    time.sleep(3)  # a few docker-sync passes: h2 must not get it back
    assert "gone" not in networks(h2)
    assert "gone" in networks(h1) and "gone" in networks(h3)
    assert "still has endpoints on hosts" in h2.agent_log()
    h1.docker("rm", "-f", "keeper")
    h3.docker("network", "rm", "gone")  # no endpoints anywhere now: removed everywhere
    wait_for(lambda: "gone" not in networks(h1), what="network removed on h1")
    keys = lab3.etcdctl("get", "--prefix", "--keys-only", "/pyoverlay/v1/").stdout.split()
    assert not [k for k in keys if not k.startswith(LIVENESS) and k != "/pyoverlay/v1/pools-index"], keys


def test_dead_host_keeps_its_entries_until_forgotten(lab3):
    h1, h2, h3 = lab3.hosts
    create_everywhere(lab3, "life")
    h1.docker("run", "-d", "--name", "stay", "--network", "life", lab3.image, *SLEEP)
    h3.docker("run", "-d", "--name", "doomed", "--network", "life", lab3.image, *SLEEP)
    doomed = ip_of(h3, "doomed", "life")
    converge_ping(h1, "stay", doomed)
    host_id = (h3.workdir / "state" / "host-id").read_text().strip()
    h3.kill_agent()  # silent: no heartbeat, lease expires after HOST_TTL=4 s

    def hosts_table():
        return h1.run([str(h1.lab.agent_command[0]), "hosts"], env=h1.agent_env()).stdout

    wait_for(lambda: f"{host_id} silent" in " ".join(hosts_table().split()), what="h3 silent")
    # a partition is not a death: h3's container stays in h1's tables and still answers
    assert doomed in h1.in_networks(["ip", "neigh", "show", "nud", "permanent"])
    ping(h1, "stay", doomed)
    forgot = h1.run([str(h1.lab.agent_command[0]), "forget-host", host_id], env=h1.agent_env())
    assert "1 endpoint(s) removed" in forgot.stdout
    for h in (h1, h2):
        wait_for(
            lambda h=h: doomed not in h.in_networks(["ip", "neigh", "show", "nud", "permanent"]),
            what=f"{doomed} gone from {h.name}",
        )


def test_isolation_between_networks(lab3):
    h1, h2, _ = lab3.hosts
    create_everywhere(lab3, "red")
    create_everywhere(lab3, "blue")
    h1.docker("run", "-d", "--name", "red1", "--network", "red", lab3.image, *SLEEP)
    h2.docker("run", "-d", "--name", "red2", "--network", "red", lab3.image, *SLEEP)
    h1.docker("run", "-d", "--name", "blue1", "--network", "blue", lab3.image, *SLEEP)
    h2.docker("run", "-d", "--name", "blue2", "--network", "blue", lab3.image, *SLEEP)
    converge_ping(h1, "red1", ip_of(h2, "red2", "red"))
    converge_ping(h1, "blue1", ip_of(h2, "blue2", "blue"))
    for host, box, target_host, target, net in [
        (h1, "red1", h1, "blue1", "blue"),
        (h1, "red1", h2, "blue2", "blue"),
        (h2, "blue2", h1, "red1", "red"),
    ]:
        assert ping(host, box, ip_of(target_host, target, net), check=False).returncode != 0


def test_cluster_ipam_under_racing_docker_runs(lab3):
    create_everywhere(lab3, "race", "--subnet", "10.51.0.0/24")
    per_host = 6

    def start(h, i):
        h.docker("run", "-d", "--name", f"r{h.name}x{i}", "--network", "race", lab3.image, *SLEEP)
        return ip_of(h, f"r{h.name}x{i}", "race")

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(lab3.hosts) * 3) as pool:
        futures = [pool.submit(start, h, i) for h in lab3.hosts for i in range(per_host)]
        addresses = [f.result() for f in futures]
    assert len(addresses) == len(set(addresses)) == per_host * len(lab3.hosts)
    # Docker shows a gateway only where one was passed in: the hosts that followed h1 pass the cluster's
    gateways = {networks(h)["race"]["IPAM"]["Config"][0].get("Gateway") for h in lab3.hosts[1:]}
    assert gateways == {"10.51.0.1"}
    record = lab3.etcdctl("get", "--print-value-only", "/pyoverlay/v1/owners/10.51.0.0/24/gateway").stdout
    assert json.loads(record)["address"] == "10.51.0.1"
    # an address released on one host is free for every host
    h1, h2, _ = lab3.hosts
    freed = ip_of(h1, "rh1x0", "race")
    h1.docker("rm", "-f", "rh1x0")
    h2.docker("run", "-d", "--name", "taker", "--network", "race", "--ip", freed, lab3.image, *SLEEP)
    assert ip_of(h2, "taker", "race") == freed


def test_outbound_and_published_ports(lab3):
    h1, h2, _ = lab3.hosts
    create_everywhere(lab3, "out")
    h1.docker(
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "out",
        "-p",
        "8080:80",
        lab3.image,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    )
    h1.docker(
        "exec", "web", "ping", "-c", "1", "-W", "2", lab3.underlay_address
    )  # outbound via docker_gwbridge
    fetch = (
        "import urllib.request,sys;"
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    out = wait_for(
        lambda: h2.run(["python3", "-c", fetch, f"http://{h1.address}:8080/passwd"], check=False).stdout,
        what="published port",
    )
    assert "root:" in out
