"""`pyoverlay status` / `ps`: what is collected from a store (the embedded one, in memory: a real
primitive that passes the contract suite), how it is printed, and the picture."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import fields, replace
from pathlib import Path

import pytest

from kvstore import HOST_KIND, Endpoint, Host, Network, Store, open_store
from plugin import cli, status, status_text
from plugin.settings import Settings

RANGE = "10.200.0.0/16"


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for f in fields(Settings):
        monkeypatch.delenv(f.name.upper(), raising=False)


def endpoint(store: Store, eid: str, net: Network, host: str, name: str, **kw) -> Endpoint:
    mac = kw.pop("mac", "02:42:0a:01:00:05")
    address = store.reserve_address(net.pool_id, mac, host, kw.pop("ip", None))
    prefix = net.subnet.split("/")[1]
    return store.put_endpoint(
        Endpoint(
            eid,
            net.network_id,
            host,
            vtep="192.0.2.1",
            mac=mac,
            address=f"{address}/{prefix}",
            container_name=name,
            **kw,
        )  # fmt: skip
    )


def cluster(store: Store) -> dict[str, Network]:
    """Two live hosts and one silent one; web on all three (blocks), db (encrypted, no blocks) on h1."""
    for host_id, address in (("h1", "192.0.2.1"), ("h2", "192.0.2.2"), ("h3", "192.0.2.3")):
        store.register_host(Host(host_id, address, hostname=f"node{host_id[1]}"))
    web_pool = store.request_pool("h1", "10.1.0.0/24", None, RANGE, 24, block_size=28)
    web = store.create_network(
        "h1", "dockW1", Network("dockW1", 0, subnet="10.1.0.0/24", pool_id=web_pool.pool_id, name="web")
    )
    store.create_network("h2", "dockW2", Network("dockW2", 0, subnet="10.1.0.0/24", pool_id=web_pool.pool_id))
    store.create_network("h3", "dockW3", Network("dockW3", 0, subnet="10.1.0.0/24", pool_id=web_pool.pool_id))
    store.reserve_address(web_pool.pool_id, "gateway", "h1")
    store.claim_block(web_pool.pool_id, "h1")
    db_pool = store.request_pool("h1", "10.2.0.0/29", None, RANGE, 24)
    db_net = Network("dockD1", 0, subnet="10.2.0.0/29", pool_id=db_pool.pool_id, name="db")
    db = store.create_network("h1", "dockD1", replace(db_net, options={"encrypted": "true"}))
    endpoint(store, "e1", web, "h1", "box1", mac="02:42:0a:01:00:05")
    endpoint(store, "e2", web, "h2", "box2", mac="02:42:0a:01:00:06")
    endpoint(store, "e3", web, "h3", "box3", mac="02:42:0a:01:00:07")
    endpoint(store, "e4", db, "h1", "pg", mac="02:42:0a:02:00:02")
    endpoint(store, "x1", web, "h2", "", mac="02:42:0a:01:00:09", kind=HOST_KIND)  # pyoverlay expose
    return {"web": web, "db": db}


def test_the_cluster_view_has_every_host_network_and_pool_use() -> None:
    store = open_store([], None)
    cluster(store)
    view = status.collect_cluster(store)
    hosts = {h["id"]: h for h in view["hosts"]}
    assert set(hosts) == {"h1", "h2", "h3"}
    assert hosts["h1"]["networks"] == ["db", "web"] and hosts["h1"]["endpoints"] == 2
    assert hosts["h2"]["endpoints"] == 1  # the host's own address (expose) is no container
    assert hosts["h3"]["address"] == "192.0.2.3" and hosts["h3"]["state"] == "alive"
    assert hosts["h1"]["heartbeat_age"] is not None and hosts["h1"]["heartbeat_age"] < 60
    nets = {n["name"]: n for n in view["networks"]}
    web, db = nets["web"], nets["db"]
    assert [h["id"] for h in web["hosts"]] == ["h1", "h2", "h3"]
    assert {h["docker_network_id"] for h in web["hosts"]} == {"dockW1", "dockW2", "dockW3"}
    assert web["endpoints"] == 3 and web["subnets"] == ["10.1.0.0/24"] and web["encrypted"] is False
    [use] = web["pools"]
    assert (use["used"], use["total"]) == (5, 254)  # gateway + 3 containers + the exposed host
    assert use["blocks"]["prefixlen"] == 28 and use["blocks"]["total"] == 16
    assert use["blocks"]["claimed"] >= 1 and "node1" in use["blocks"]["by_host"]
    assert db["encrypted"] is True
    assert (db["pools"][0]["used"], db["pools"][0]["total"]) == (1, 6)
    assert db["pools"][0]["blocks"]["prefixlen"] == 0


def test_an_expired_host_keeps_its_address_and_last_heartbeat() -> None:
    store = open_store([], None)
    nets = cluster(store)
    store.register_host(Host("h4", "192.0.2.4", hostname="node4"), ttl=1)
    endpoint(store, "e5", nets["web"], "h4", "box4", mac="02:42:0a:01:00:0a")
    time.sleep(1.2)  # the embedded store's leases run on the wall clock
    assert "h4" not in {h.host_id for h in store.list_hosts()}
    view = status.collect_cluster(store, now=time.time() + 3600)
    h4 = next(h for h in view["hosts"] if h["id"] == "h4")
    assert h4["address"] == "192.0.2.4" and h4["hostname"] == "node4" and h4["heartbeat_age"] >= 3600
    assert h4["state"] == "expired" and h4["networks"] == [] and h4["endpoints"] == 1
    store.forget_host("h4")
    assert "h4" not in {h["id"] for h in status.collect_cluster(store)["hosts"]}  # forgotten: gone


def test_ps_lists_every_endpoint_or_one_network() -> None:
    store = open_store([], None)
    cluster(store)
    rows = status.collect_endpoints(store)
    containers = [(r["network"], r["container"], r["host"]) for r in rows if r["kind"] != HOST_KIND]
    assert containers == [("db", "pg", "node1"), ("web", "box1", "node1"), ("web", "box2", "node2"),
                          ("web", "box3", "node3")]  # fmt: skip
    assert rows[0]["ipv4"] == "10.2.0.1/29" and all(r["ipv4"].startswith("10.1.0.") for r in rows[1:])
    assert len({r["ipv4"] for r in rows}) == 5 and all(r["mac"].startswith("02:42") for r in rows)
    assert {r["container"] for r in status.collect_endpoints(store, "db")} == {"pg"}
    with pytest.raises(LookupError, match="no network 'nope' in the store \\(networks: db, web\\)"):
        status.collect_endpoints(store, "nope")
    text = status_text.format_ps(rows)
    assert text.splitlines()[0].split() == ["NETWORK", "CONTAINER", "HOST", "IPV4", "IPV6", "MAC"]
    assert "<host>" in text and "pg" in text and len(text.splitlines()) == 6


LOCAL = {
    "host_id": "h1",
    "hostname": "node1",
    "address": "192.0.2.1",
    "version": "0.1.0",
    "store": {"kind": "etcd", "endpoints": ["http://192.0.2.100:2379"], "healthy": True, "revision": 120},
    "away": False,
    "refusal": None,
    "lease": {"id": 7587, "ttl": 30, "renewed_ago": 2.0},
    "event_loop": {"applied_revision": 117, "lag": 3},
    "datapath": "vxlan",
}


def test_status_text_shows_this_host_hosts_and_networks() -> None:
    store = open_store([], None)
    cluster(store)
    text = status_text.format_status(status.collect_cluster(store), LOCAL)
    assert "  store       etcd http://192.0.2.100:2379: ok, revision 120" in text
    assert "  event loop  applied revision 117, lag 3" in text and "  datapath    vxlan" in text
    assert "lease       7587, ttl 30s, renewed 2s ago" in text
    host_lines = [line for line in text.splitlines() if "192.0.2." in line and "alive" in line]
    assert len(host_lines) == 3 and host_lines[0].lstrip().startswith("* h1")  # this host marked
    web = next(line for line in text.splitlines() if line.lstrip().startswith("web"))
    assert "node1,node2,node3" in web and "5/254 (blocks /28:" in web and web.rstrip().endswith("no")
    db = next(line for line in text.splitlines() if line.lstrip().startswith("db"))
    assert "1/6" in db and db.rstrip().endswith("yes")


def test_status_text_without_agent_or_store() -> None:
    text = status_text.format_status(None, {"error": "agent not answering (no agent socket found)"}, "down")
    assert "agent not answering (no agent socket found)" in text and "Cluster: store not read: down" in text


def test_datapath_mode() -> None:
    assert status.datapath_mode() == "vxlan"
    assert status.datapath_mode("userspace") == "vxlan; encrypted networks: vxlan in wireguard-userspace"


def test_cli_status_and_ps_on_the_embedded_store(capsys, tmp_path: Path) -> None:
    state = str(tmp_path)
    store = open_store([], state)
    cluster(store)
    store.close()
    (tmp_path / "host-id").write_text("h1\n")
    sock = str(tmp_path / "nothing.sock")
    assert cli.main(["status", "--json", "--state-dir", state, "--socket", sock]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["local"]["error"].startswith("agent not answering (") and sock in out["local"]["error"]
    assert {n["name"] for n in out["cluster"]["networks"]} == {"web", "db"}
    assert cli.main(["ps", "web", "--json", "--state-dir", state]) == 0
    names = {e["container"] for e in json.loads(capsys.readouterr().out)["endpoints"]}
    assert names == {"box1", "box2", "box3", ""}
    assert cli.main(["ps", "nope", "--state-dir", state]) == 1
    assert "no network 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz's dot is not installed (apt-get install graphviz)"
)
def test_graph_draws_hosts_networks_and_addresses(tmp_path: Path) -> None:
    pytest.importorskip("graphviz")
    from plugin.status_graph import draw

    store = open_store([], None)
    cluster(store)
    view, rows = status.collect_cluster(store), status.collect_endpoints(store)
    svg = Path(draw(view, rows, str(tmp_path / "c.svg"), "h1")).read_text()
    for text in ("node1 (this host)", "node2", "node3", "box1", "box3", "pg", "10.2.0.1/29", "web", "VNI"):
        assert text in svg, text
    assert Path(draw(view, rows, str(tmp_path / "c.png"))).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="must end in .svg or .png"):
        draw(view, rows, str(tmp_path / "c.pdf"))


def test_hosts_sharing_a_hostname_are_told_apart_by_address() -> None:
    records = {
        "a": Host("a", "192.0.2.1", "debian"),
        "b": Host("b", "192.0.2.2", "debian"),
        "c": Host("c", "192.0.2.3", "node3"),
        "d": None,
    }
    assert status.host_labels(records) == {
        "a": "debian@192.0.2.1",
        "b": "debian@192.0.2.2",
        "c": "node3",
        "d": "d",
    }
