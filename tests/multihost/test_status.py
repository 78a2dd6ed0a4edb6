"""`pyoverlay status` and `pyoverlay ps` on a 3-host lab (etcd): run on each host with its agent's
settings, they show every host, network, endpoint, container name and address the lab holds, and this
host's part comes from its own agent. STATUS_GRAPH=path.svg keeps the picture (docs/status-graph.svg)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.lab.fixtures import lab_image_tar, make_lab  # noqa: F401
from tests.lab.system import wait_until as wait_for

from .test_overlay import SLEEP, create_everywhere, ip_of, lab3  # noqa: F401

pytestmark = pytest.mark.lab


def pyoverlay(h, *args: str):
    """The CLI inside the host, with its agent's environment (SOCKET, STATE_DIR, ETCD_ENDPOINTS)."""
    done = h.run([str(h.lab.agent_command[0]), *args], env=h.agent_env(), check=False)
    assert done.returncode == 0, f"pyoverlay {' '.join(args)} on {h.name}: {done.stderr}"
    return done.stdout


def host_id(h) -> str:
    return (h.workdir / "state" / "host-id").read_text().strip()


def test_status_and_ps_show_the_lab(lab3, tmp_path: Path):  # noqa: F811
    h1, h2, h3 = lab3.hosts
    create_everywhere(lab3, "front", "--subnet", "10.70.0.0/24")
    create_everywhere(lab3, "back", "--subnet", "10.71.0.0/24")
    placed = {"web1": (h1, "front"), "web2": (h2, "front"), "web3": (h3, "front"), "db": (h3, "back")}
    for name, (h, net) in placed.items():
        h.docker("run", "-d", "--name", name, "--network", net, lab3.image, *SLEEP)
    h1.docker("run", "-d", "--name", "api", "--network", "back", lab3.image, *SLEEP)
    h1.docker("network", "connect", "front", "api")
    placed["api"] = (h1, "back")
    addresses = {(n, net): ip_of(h, n, net) for n, (h, net) in placed.items()}
    addresses[("api", "front")] = ip_of(h1, "api", "front")

    def ps() -> list[dict]:
        return json.loads(pyoverlay(h2, "ps", "--json"))["endpoints"]

    # container names reach the store from each host's Docker sync, a moment after the run
    wait_for(lambda: all(e["container"] for e in ps()) and len(ps()) == 6, what="every endpoint named")
    ids = {h.name: host_id(h) for h in lab3.hosts}
    rows = {(e["container"], e["network"]): e for e in ps()}
    assert set(rows) == set(addresses)
    for (name, net), address in addresses.items():
        row = rows[(name, net)]
        owner = placed[name][0] if name != "api" else h1
        assert row["ipv4"].split("/")[0] == address and row["host_id"] == ids[owner.name]
        assert owner.address in row["host"] and row["mac"].startswith("02:42")
    only_back = json.loads(pyoverlay(h1, "ps", "back", "--json"))["endpoints"]
    assert {e["container"] for e in only_back} == {"db", "api"}

    for h in lab3.hosts:
        report = json.loads(pyoverlay(h, "status", "--json"))
        local, cluster = report["local"], report["cluster"]
        assert local["host_id"] == ids[h.name] and local["address"] == h.address  # from its own agent
        assert local["store"] == {**local["store"], "kind": "etcd", "healthy": True}
        assert local["datapath"].startswith("vxlan") and local["event_loop"]["lag"] >= 0
        hosts = {x["id"]: x for x in cluster["hosts"]}
        assert set(hosts) == set(ids.values())
        for other in lab3.hosts:
            entry = hosts[ids[other.name]]
            assert entry["state"] == "alive" and entry["address"] == other.address
            assert entry["heartbeat_age"] is not None and entry["heartbeat_age"] < 30
        assert hosts[ids["h1"]]["endpoints"] == 3 and hosts[ids["h3"]]["endpoints"] == 2
        assert sorted(hosts[ids["h3"]]["networks"]) == ["back", "front"]
        nets = {n["name"]: n for n in cluster["networks"]}
        assert {h["id"] for h in nets["front"]["hosts"]} == set(ids.values())
        assert nets["front"]["endpoints"] == 4 and nets["back"]["endpoints"] == 2  # api is on both
        assert nets["front"]["subnets"] == ["10.70.0.0/24"] and nets["front"]["encrypted"] is False
        [pool] = nets["front"]["pools"]
        assert pool["total"] == 254 and pool["used"] >= 5  # the gateway and four containers
        assert pool["blocks"]["claimed"] >= 3  # each host with a container there holds a block
    text = pyoverlay(h1, "status")
    print(text)
    print(pyoverlay(h1, "ps"))
    assert f"* {ids['h1']}" in text and "front" in text and "lag" in text

    graph = Path(os.environ.get("STATUS_GRAPH") or tmp_path / "lab.svg").resolve()
    pyoverlay(h1, "status", "--graph", str(graph))
    svg = graph.read_text()
    for name in ("web1", "web2", "web3", "db", "api", "front", "back", *(a for a in addresses.values())):
        assert name in svg, name
    png = graph.with_suffix(".png")
    pyoverlay(h1, "status", "--graph", str(png))
    assert png.read_bytes()[:4] == b"\x89PNG"
    print(f"picture: {graph} and {png}")
