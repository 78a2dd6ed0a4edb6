"""The managed plugin for real: built by `make plugin` in a lab host's daemon, pushed to a registry on the
underlay, `docker plugin install`ed on two hosts; then cross-host traffic, `disable -f`/`enable` under
traffic, `docker plugin set`, container restarts, and names across hosts.

Build: the base image (`pyoverlay-base:bookworm`, debootstrap) is made once in the root daemon and kept
there as a cache, then copied into h1, whose daemon builds the image and creates the plugin under its
registry name (h1's daemon is thrown away with the lab, so the root daemon gets nothing else).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import Lab
from tests.lab.fixtures import lab_image_tar  # noqa: F401
from tests.lab.host import DOCKER
from tests.lab.names import lab_daemon_json, resolved, start_upstream
from tests.lab.registry import LocalRegistry, registry_available
from tests.lab.system import wait_until as wait_for
from tests.multihost.managed_cluster import (
    DRIVER,
    METRICS_PORT,
    REGISTRY,
    Cluster,
    build_push_install,
    converge_ping,
    create_network,
    disable,
    held_blocks_kept,
    ip_of,
    plugin_id,
    plugin_log,
    run_box,
    say,
    snapshot,
    socket_of,
    time_enable,
)

pytestmark = pytest.mark.lab

EXTERNAL = {"www.example.test": "192.0.2.10"}


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest,
    lab_image_tar: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """Two lab hosts with the plugin built, pushed and installed from the underlay's registry."""
    missing = [tool for tool in ("make", "debootstrap") if shutil.which(tool) is None]
    if not registry_available():
        missing.append("docker-registry")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"managed-plugin lab test needs {', '.join(missing)} on CI")
        pytest.skip(f"managed-plugin lab test needs {', '.join(missing)}")
    start = time.monotonic()
    workdir = tmp_path_factory.mktemp("managed")
    lab = Lab(
        2,
        f"l{os.getpid()}mp",
        etcd=True,
        workdir=workdir / "lab",
        image_tar=lab_image_tar,
        dockerd_args=[f"--insecure-registry={REGISTRY}"],  # the registry below, plain HTTP
        daemon_json=lab_daemon_json(),  # what the cluster install has a user apply
    )
    facts: dict[str, str] = {}
    # The helpers in tests.lab.registry run $DOCKER: the 20.10 client that matches the daemons.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DOCKER", DOCKER)
        lab.up()
        registry = upstream = None
        try:
            upstream = start_upstream(lab, EXTERNAL)
            registry = LocalRegistry(
                host=lab.underlay_address,
                port=5000,
                prefix=["nsenter", f"--net=/run/netns/{lab.underlay_netns}", "--"],
            ).start()
            assert registry.address == REGISTRY, registry.address
            cluster = Cluster(lab, registry.ref("pyoverlay:test"), facts)
            cluster.facts["lab up"] = f"{lab.timings['up']:.1f} s"
            build_push_install(cluster, registry, workdir / "plugin")
            cluster.facts["setup total"] = f"{time.monotonic() - start:.1f} s"
            say(request, "managed plugin: " + "; ".join(f"{k}: {v}" for k, v in cluster.facts.items()))
            yield cluster
        finally:
            for h in lab.hosts:
                print(f"--- {h.name} dockerd log, plugin lines\n" + plugin_log(h)[-12000:])
            if registry is not None:
                registry.stop()
            if upstream is not None:
                upstream.kill()
                upstream.wait()
            lab.down()  # h1's images and both hosts' plugins go with their daemons
            facts["whole module"] = f"{time.monotonic() - start:.1f} s"
            say(request, "managed plugin, all: " + "; ".join(f"{k}: {v}" for k, v in facts.items()))


def test_installed_from_registry_network_spreads_and_containers_talk(cluster):
    h1, h2 = cluster.hosts
    for h in cluster.hosts:
        info = json.loads(h.docker("plugin", "inspect", DRIVER).stdout)[0]
        assert info["PluginReference"] == cluster.ref
        assert info["Config"]["Linux"]["Capabilities"] == [
            "CAP_NET_ADMIN",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_ADMIN",
        ]
    create_network(cluster, "ov", "10.61.0.0/24")
    ip1 = run_box(cluster, h1, "box1", "ov")
    ip2 = run_box(cluster, h2, "box2", "ov")
    assert ip1 != ip2
    converge_ping(h1, "box1", ip2)
    converge_ping(h2, "box2", ip1)
    # each agent runs with its own host id from its own state mount
    ids = {(h.workdir / "state" / "host-id").read_text().strip() for h in cluster.hosts}
    assert len(ids) == 2
    hosts = cluster.lab.etcdctl("get", "--prefix", "--print-value-only", "/pyoverlay/v1/hosts/").stdout
    assert {json.loads(v)["address"] for v in hosts.splitlines() if v} == {h1.address, h2.address}


def test_encrypted_network_runs_wireguard_go_from_the_image(cluster):
    """The plugin carries an encrypted network with what it ships (wireguard-go, /dev/net/tun) and the
    capabilities it has: this kernel has no WireGuard module."""
    h1, h2 = cluster.hosts
    create_network(cluster, "sealed", "10.65.0.0/24", "-o", "encrypted")
    run_box(cluster, h1, "e1", "sealed")
    ip2 = run_box(cluster, h2, "e2", "sealed")
    converge_ping(h1, "e1", ip2)
    assert "tunnel device pyo-wg up: userspace WireGuard" in plugin_log(h1)


def test_names_across_hosts(cluster):
    """The plugin's name service: another host's container by name, and the host's own resolvers (the
    lab's upstream) through the plugin, which sees the host's /etc/resolv.conf."""
    h1, h2 = cluster.hosts
    create_network(cluster, "named", "10.64.0.0/24")
    run_box(cluster, h1, "n1", "named")
    ip2 = run_box(cluster, h2, "n2", "named")
    wait_for(lambda: resolved(h1, "n1", "n2") == [ip2], 10, "n2 by name on h1")
    converge_ping(h1, "n1", "n2")  # by name; the first packet across hosts may precede the peers' entries
    assert resolved(h1, "n1", "www.example.test") == ["192.0.2.10"]


def test_disable_enable_keeps_traffic_and_state(cluster, request):
    h1, h2 = cluster.hosts
    create_network(cluster, "steady", "10.62.0.0/24")
    ip1 = run_box(cluster, h1, "c1", "steady")
    ip2 = run_box(cluster, h2, "c2", "steady")
    converge_ping(h1, "c1", ip2)
    converge_ping(h2, "c2", ip1)
    before = snapshot(cluster, "steady", {"c1": h1, "c2": h2})

    count = 80  # 16 s at 0.2 s: covers the disable (a few s), 2 s disabled, the enable and after
    pinged: dict[str, subprocess.CompletedProcess] = {}
    pinger = threading.Thread(
        target=lambda: pinged.setdefault(
            "out",
            h1.docker(
                "exec", "c1", "ping", "-i", "0.2", "-c", str(count), "-W", "1", ip2, check=False, timeout=60
            ),
        )
    )
    pinger.start()
    time.sleep(2)
    took_disable = disable(h2)
    assert not os.path.exists(socket_of(h2)), "socket still there with the plugin disabled"
    time.sleep(2)
    answered, returned = time_enable(h2)
    pinger.join()
    out = pinged["out"].stdout
    assert f"{count} packets transmitted, {count} packets received, 0% packet loss" in out, out[-500:]
    cluster.facts["disable -f"] = f"{took_disable:.1f} s"
    cluster.facts["enable -> socket answers /Plugin.Activate"] = f"{answered:.2f} s"
    cluster.facts["enable command returns"] = f"{returned:.2f} s"
    say(request, f"managed plugin: disable -f {took_disable:.1f} s; enable -> socket {answered:.2f} s")

    # give the restarted agent a pass over the store and the kernel, then nothing may have changed
    time.sleep(3)
    after = snapshot(cluster, "steady", {"c1": h1, "c2": h2})
    lost = held_blocks_kept(before, after)
    assert not lost, f"address blocks lost or moved by the restart: {lost}"
    del after["blocks"], before["blocks"]
    assert after == before
    # the restarted agent still serves: a new container on h2 gets a fresh address and talks both ways
    ip3 = run_box(cluster, h2, "c3", "steady")
    assert ip3 not in (ip1, ip2)
    converge_ping(h1, "c1", ip3)
    converge_ping(h2, "c3", ip1)


def test_plugin_set_applies(cluster, request):
    h2 = cluster.hosts[1]
    env = h2.docker("plugin", "inspect", "-f", "{{json .Settings.Env}}", DRIVER).stdout
    assert "LOG_LEVEL=info" in json.loads(env)
    pid = plugin_id(h2)
    assert not [line for line in plugin_log(h2).splitlines() if " DEBUG " in line]

    # settings change only while the plugin is disabled
    refused = h2.docker("plugin", "set", DRIVER, "LOG_LEVEL=debug", check=False)
    assert refused.returncode != 0 and "disable" in refused.stderr, refused.stderr
    disable(h2)
    mark = len(h2.dockerd_log())
    h2.docker("plugin", "set", DRIVER, "LOG_LEVEL=debug", "HOST_TTL=9")
    answered, _ = time_enable(h2)
    cluster.facts["enable -> socket (after set)"] = f"{answered:.2f} s"
    env = json.loads(h2.docker("plugin", "inspect", "-f", "{{json .Settings.Env}}", DRIVER).stdout)
    assert "LOG_LEVEL=debug" in env and "HOST_TTL=9" in env

    # LOG_LEVEL: the agent's debug lines now reach dockerd's log, tagged with the plugin's id
    def debug_lines():
        return [line for line in plugin_log(h2, since=mark).splitlines() if " DEBUG " in line and pid in line]

    wait_for(debug_lines, what="debug lines from the plugin in dockerd's log")

    # HOST_TTL: the host's liveness lease in etcd is granted for 9 s
    host_id = (h2.workdir / "state" / "host-id").read_text().strip()

    def lease_ttl() -> str:
        found = cluster.lab.etcdctl("get", f"/pyoverlay/v1/hosts/{host_id}", "-w", "json").stdout
        lease = json.loads(found)["kvs"][0].get("lease")
        return cluster.lab.etcdctl("lease", "timetolive", format(lease, "x")).stdout if lease else ""

    wait_for(lambda: "granted with TTL(9s)" in lease_ttl(), what="host lease with TTL 9 s")
    say(request, f"managed plugin: after set, enable -> socket {answered:.2f} s")


def test_container_restart_keeps_connectivity(cluster):
    h1, h2 = cluster.hosts
    create_network(cluster, "again", "10.63.0.0/24")
    ip1 = run_box(cluster, h1, "r1", "again")
    ip2 = run_box(cluster, h2, "r2", "again")
    converge_ping(h1, "r1", ip2)
    for h, name in ((h2, "r2"), (h1, "r1")):
        restarted = h.docker("restart", "-t", "1", name, check=False)
        assert restarted.returncode == 0, f"{restarted.stderr}\n{plugin_log(h)[-6000:]}"
    # dockerd releases and requests the address again on restart: it may change
    ip1, ip2 = ip_of(h1, "r1", "again"), ip_of(h2, "r2", "again")
    converge_ping(h1, "r1", ip2)
    converge_ping(h2, "r2", ip1)


def test_metrics_served_by_the_plugin(cluster):
    """The image has the Prometheus client, and METRICS_ADDR reaches the agent inside the plugin."""
    h1 = cluster.hosts[0]
    fetch = (
        "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    url = f"http://{h1.address}:{METRICS_PORT}/metrics"

    def scraped() -> str:
        return cluster.lab.underlay_run([sys.executable, "-c", fetch, url], check=False).stdout

    wait_for(lambda: "pyoverlay_event_loop_lag_revisions " in scraped(), what=f"metrics at {url}")
    body = scraped()
    assert (
        'pyoverlay_plugin_request_duration_seconds_count{outcome="ok",type="NetworkDriver.GetCapabilities"}'
        in body
    )


def test_status_and_ps_from_the_host_with_the_cli_installed_apart(cluster):
    """The CLI installed on the host (the test venv's, as `pip install` puts it) reads the store with
    the plugin's settings and finds the plugin's own socket, /run/docker/plugins/<id>/pyoverlay.sock."""
    h1, h2 = cluster.hosts
    create_network(cluster, "seen", "10.67.0.0/24")
    address = run_box(cluster, h2, "seenbox", "seen")
    cli = str(Path(sys.executable).parent / "pyoverlay")
    env = {k: v for k, v in os.environ.items() if k != "SOCKET"}
    env.update(STATE_DIR=str(h1.workdir / "state"), ETCD_ENDPOINTS=",".join(cluster.lab.etcd_endpoints))

    def ps() -> list[dict]:
        return json.loads(h1.run([cli, "ps", "seen", "--json"], env=env).stdout)["endpoints"]

    wait_for(lambda: [e["container"] for e in ps()] == ["seenbox"], what="seenbox named in the store")
    [row] = ps()
    assert row["ipv4"] == f"{address}/24" and h2.address in row["host"]
    report = json.loads(h1.run([cli, "status", "--json"], env=env).stdout)
    local = report["local"]
    assert local["host_id"] == (h1.workdir / "state" / "host-id").read_text().strip()
    assert local["socket"] == f"/run/docker/plugins/{plugin_id(h1)}/pyoverlay.sock"
    assert local["store"]["kind"] == "etcd" and local["store"]["healthy"] is True
    seen = next(n for n in report["cluster"]["networks"] if n["name"] == "seen")
    assert {h["id"] for h in seen["hosts"]} == {
        (h.workdir / "state" / "host-id").read_text().strip() for h in (h1, h2)
    }
    print(h1.run([cli, "status"], env=env).stdout)


def test_the_bare_driver_name_is_not_resolved_by_dockerd(cluster):
    """Why the driver name carries the tag (docs/install.md, "The driver name"): dockerd registers the
    driver as `pyoverlay:latest` and does not find `pyoverlay`. If a Docker release changes that, this
    fails and the docs can say `-d pyoverlay`."""
    h1 = cluster.hosts[0]
    refused = h1.docker(
        "network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay", "bare", check=False
    )
    assert refused.returncode != 0
    assert "could not resolve driver pyoverlay in registry" in refused.stderr, refused.stderr
    assert h1.docker("network", "ls", "-q", "--filter", "name=^bare$").stdout.strip() == ""
