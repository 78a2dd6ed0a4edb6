"""The managed-plugin lab cluster: build with `make plugin` in a lab host, push to a registry on the
underlay, install on every host; and the probes its tests use (socket timing, state snapshots)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab import Lab
from tests.lab.host import DOCKER, LabHost
from tests.lab.registry import (
    LocalRegistry,
    install_plugin,
    plugin_socket,
    push_plugin,
    remove_plugin,
)
from tests.lab.system import wait_until as wait_for
from tests.plugin_client import PluginClient

REPO = Path(__file__).resolve().parents[2]
BASE = "pyoverlay-base:bookworm"  # packaging/build-base.sh's image: no registry has python:3.11-slim here
IMAGE = "pyoverlay-plugin:build"  # build-plugin.sh's image tag, in h1's daemon
REGISTRY = "10.99.0.254:5000"  # the lab's underlay address (the default underlay's .254), port 5000
DRIVER = "pyoverlay:latest"  # `--alias pyoverlay`: a managed plugin's driver name carries its tag
SLEEP = ("sleep", "3600")


@dataclass
class Cluster:
    lab: Lab
    ref: str  # the plugin in the lab's registry
    facts: dict[str, str] = field(default_factory=dict)  # sizes and timings, printed at the end

    @property
    def hosts(self) -> list[LabHost]:
        return self.lab.hosts


def say(request: pytest.FixtureRequest, line: str) -> None:
    """Straight to the terminal, past output capturing: the closing note quotes these numbers."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


# --- build, push, install -------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def _run_checked(cmd: list[str], env: dict[str, str], timeout: float) -> None:
    proc = subprocess.run(
        cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def load_base_image(h: LabHost) -> str:
    """Put BASE into h's daemon: from the machine's daemon ($DOCKER_HOST or the root one), which builds it
    once and keeps it as a cache; without one, built straight into h's. Returns where it came from."""
    build_base = [str(REPO / "packaging" / "build-base.sh"), BASE]  # debootstrap; a no-op if BASE exists
    root = [DOCKER]
    if subprocess.run([*root, "version"], capture_output=True, timeout=30, check=False).returncode != 0:
        _run_checked(build_base, _env(DOCKER=DOCKER, DOCKER_HOST=h.docker_host), 900)
        return "debootstrap into h1 (no root daemon)"
    inspect = subprocess.run([*root, "image", "inspect", BASE], capture_output=True, timeout=30, check=False)
    cached = inspect.returncode == 0
    if not cached:
        _run_checked(build_base, _env(DOCKER=DOCKER), 900)
    save = subprocess.Popen([*root, "save", BASE], stdout=subprocess.PIPE)
    load = subprocess.run(
        [DOCKER, "-H", h.docker_host, "load"], stdin=save.stdout, capture_output=True, text=True, timeout=300
    )
    assert save.stdout is not None
    save.stdout.close()
    assert save.wait(60) == 0 and load.returncode == 0, f"docker save | docker load: {load.stderr}"
    return "root daemon's cache" if cached else "debootstrap into the root daemon (kept as a cache)"


def registry_manifest_size(lab: Lab, registry: LocalRegistry, name: str, tag: str) -> int:
    """Bytes of the plugin's compressed layers as pushed (what every host downloads)."""
    fetch = (
        "import sys, urllib.request as u; "
        "r = u.Request(sys.argv[1], headers={'Accept': sys.argv[2]}); "
        "print(u.urlopen(r, timeout=5).read().decode())"
    )
    url = f"http://{registry.address}/v2/{name}/manifests/{tag}"
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    manifest = json.loads(lab.underlay_run([sys.executable, "-c", fetch, url, accept]).stdout)
    return sum(layer["size"] for layer in manifest["layers"])


def du_bytes(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0])


def mb(size: int | str) -> str:
    return f"{int(size) / 1e6:.0f} MB"


METRICS_PORT = 9464  # the plugin shares the host's network namespace: it listens on the host's address


def build_push_install(cluster: Cluster, registry: LocalRegistry, plugin_dir: Path) -> None:
    lab, facts, h1 = cluster.lab, cluster.facts, cluster.hosts[0]
    t = time.monotonic()
    facts["base image from"] = load_base_image(h1)
    facts["base image load"] = f"{time.monotonic() - t:.1f} s"

    t = time.monotonic()
    build_env = _env(
        DOCKER=DOCKER,
        DOCKER_HOST=h1.docker_host,
        PLUGIN_DIR=str(plugin_dir),
        PYTHON=sys.executable,  # wheelhouse.sh's pip: the venv has one, a bare python3 may not
    )
    _run_checked(["make", "plugin", f"PLUGIN_NAME={cluster.ref}", f"BASE={BASE}"], build_env, 900)
    facts["make plugin"] = f"{time.monotonic() - t:.1f} s"
    facts["base image size"] = mb(h1.docker("image", "inspect", "-f", "{{.Size}}", BASE).stdout)
    facts["agent image size"] = mb(h1.docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
    facts["plugin rootfs"] = mb(du_bytes(plugin_dir / "rootfs"))
    shutil.rmtree(plugin_dir)  # 170 MB; `docker plugin create` has copied it

    push_plugin(cluster.ref, docker_host=h1.docker_host)
    facts["plugin in registry (compressed)"] = mb(registry_manifest_size(lab, registry, "pyoverlay", "test"))
    # h1 installs from the registry like every other host, not the copy it built.
    remove_plugin(cluster.ref, docker_host=h1.docker_host)

    def install(h: LabHost) -> float:
        t = time.monotonic()
        # the host setup docs/install.md asks for: the state directory a shared mount point of its own, so
        # the plugin's mounts of networks' namespaces there reach the host and outlive the plugin
        state = str(h.workdir / "state")
        h.run(["mount", "--bind", state, state])
        h.run(["mount", "--make-shared", state])
        settings = {
            "ETCD_ENDPOINTS": lab.etcd_endpoint or "",
            "ADVERTISE_ADDR": h.address,
            "METRICS_ADDR": f"{h.address}:{METRICS_PORT}",
            # Paths in the host's own mount namespace, where dockerd (and runc) resolve them; the lab's
            # shared root filesystem has no per-host /var/lib/pyoverlay, so each host gets its own.
            "docker-socket.source": str(h.run_dir / "docker.sock"),
            "state.source": str(h.workdir / "state"),  # exists: dockerd does not create a mount source
        }
        install_plugin(cluster.ref, settings, alias="pyoverlay", docker_host=h.docker_host)
        return time.monotonic() - t

    with concurrent.futures.ThreadPoolExecutor(len(cluster.hosts)) as pool:
        took = list(pool.map(install, cluster.hosts))
    facts["install (pull + enable), parallel"] = " / ".join(f"{s:.1f} s" for s in took)
    for h in cluster.hosts:
        assert h.docker("plugin", "inspect", "-f", "{{.Enabled}}", DRIVER).stdout.strip() == "true"
        assert PluginClient(socket_of(h), timeout=5).ok("Plugin.Activate")["Implements"] == [
            "NetworkDriver",
            "IpamDriver",
        ]


# --- helpers on a running cluster ------------------------------------------------------------------
def socket_of(h: LabHost) -> str:
    """The plugin's socket as the root namespace reaches it (the host's /run/docker/plugins/<id>/…)."""
    return plugin_socket(DRIVER, plugins_dir=str(h.plugin_socket_dir), docker_host=h.docker_host)


def plugin_id(h: LabHost) -> str:
    return h.docker("plugin", "inspect", "-f", "{{.Id}}", DRIVER).stdout.strip()


def plugin_log(h: LabHost, since: int = 0) -> str:
    """dockerd's log lines from the plugin's output (dockerd tags them plugin=<id>)."""
    try:
        text = h.dockerd_log()[since:]
    except FileNotFoundError:
        return ""
    return "\n".join(line for line in text.splitlines() if " plugin=" in line)


def create_network(cluster: Cluster, name: str, subnet: str, *options: str) -> None:
    h1, h2 = cluster.hosts
    h1.create_network(name, "--subnet", subnet, *options, driver=DRIVER)

    # h2's agent sees the cluster network in etcd and creates it in its own daemon
    def on_h2():
        out = h2.docker("network", "ls", "--filter", f"name=^{name}$", "--format", "{{.Driver}}").stdout
        return out.strip() == DRIVER

    wait_for(on_h2, what=f"network {name} created on h2 by its agent")
    inspect = json.loads(h2.docker("network", "inspect", name).stdout)[0]
    assert inspect["IPAM"]["Driver"] == DRIVER and inspect["IPAM"]["Config"][0]["Subnet"] == subnet


def run_box(cluster: Cluster, h: LabHost, name: str, network: str) -> str:
    h.docker("run", "-d", "--init", "--name", name, "--network", network, cluster.lab.image, *SLEEP)
    return ip_of(h, name, network)


def ip_of(h: LabHost, container: str, network: str) -> str:
    out = h.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
    return json.loads(out)[network]["IPAddress"]


def converge_ping(h: LabHost, container: str, target: str, timeout: float = 15.0) -> None:
    def ok():
        return h.docker("exec", container, "ping", "-c", "1", "-W", "1", target, check=False).returncode == 0

    wait_for(ok, timeout, f"{container} on {h.name} -> {target}")


def time_enable(h: LabHost) -> tuple[float, float]:
    """`docker plugin enable`: seconds until the socket answers POST /Plugin.Activate, and until the
    command returns (dockerd activates the plugin itself before it answers)."""
    sock = socket_of(h)
    client = PluginClient(sock, timeout=2)
    start = time.monotonic()
    enable = subprocess.Popen(
        [DOCKER, "-H", h.docker_host, "plugin", "enable", DRIVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    answered = None
    while answered is None and time.monotonic() - start < 30:
        try:
            if client.call("Plugin.Activate")[0] == 200:
                answered = time.monotonic() - start
                break
        except OSError:  # no socket yet, or nobody listening on it yet
            pass
        time.sleep(0.01)
    _, err = enable.communicate(timeout=60)
    returned = time.monotonic() - start
    assert enable.returncode == 0, err
    assert answered is not None, f"{sock} never answered /Plugin.Activate"
    return answered, returned


def disable(h: LabHost) -> float:
    start = time.monotonic()
    h.docker("plugin", "disable", "-f", DRIVER)  # -f: networks use the driver
    assert h.docker("plugin", "inspect", "-f", "{{.Enabled}}", DRIVER).stdout.strip() == "false"
    return time.monotonic() - start


BLOCKS = "/pyoverlay/v1/blocks/"


def held_blocks_kept(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """The blocks held before a restart that are gone or held by another host after it."""
    kept = after["blocks"]
    return [k for k, v in before["blocks"].items() if kept.get(k) != v]  # type: ignore[union-attr]


def snapshot(cluster: Cluster, network: str, containers: dict[str, LabHost]) -> dict[str, object]:
    """What must survive a plugin restart: Docker's view, the store's keys and h2's kernel tables."""
    view: dict[str, object] = {}
    for h in cluster.hosts:
        inspect = json.loads(h.docker("network", "inspect", network).stdout)[0]
        view[f"{h.name} network"] = (inspect["Id"], inspect["Driver"], inspect["IPAM"]["Config"])
        view[f"{h.name} endpoints"] = {
            c["Name"]: (c["EndpointID"], c["IPv4Address"], c["MacAddress"])
            for c in (inspect.get("Containers") or {}).values()
        }
    for name, h in containers.items():
        view[f"{name} ip"] = ip_of(h, name, network)
    keys = cluster.lab.etcdctl("get", "--prefix", "/pyoverlay/v1/").stdout.splitlines()
    pairs = dict(zip(keys[::2], keys[1::2], strict=False))
    # liveness: registrations and the heartbeat records status reads (they change with every beat)
    view["store"] = {
        k: v
        for k, v in pairs.items()
        if not k.startswith(("/pyoverlay/v1/hosts/", "/pyoverlay/v1/hosts-seen/", BLOCKS))
    }
    # each host's keeper tops up its spare block in the background (any time after an allocation):
    # compare with held_blocks_kept, blocks may be added but none lost or moved
    view["blocks"] = {k: v for k, v in pairs.items() if k.startswith(BLOCKS)}
    h2 = cluster.hosts[1]
    view["h2 links"] = sorted(
        line.split()[0]
        for line in h2.in_networks(["ip", "-br", "link"]).splitlines()
        if line.startswith(("pobr", "povx"))
    )
    assert view["h2 links"], "no network's namespace on h2"
    view["h2 fdb"] = sorted(
        line for line in h2.in_networks(["bridge", "fdb", "show"]).splitlines() if " dst " in line
    )
    view["h2 neigh"] = sorted(h2.in_networks(["ip", "neigh", "show", "nud", "permanent"]).splitlines())
    return view


# --- tests -----------------------------------------------------------------------------------------
