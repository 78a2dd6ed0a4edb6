"""The plugin API on the live socket, spoken as dockerd speaks it, on both stores."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from kvstore import NotFound
from tests.lab.system import wait_until

pytestmark = pytest.mark.integration

MAC_OPTION = "com.docker.network.endpoint.macaddress"
GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}


def new_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def create_network(client, subnet="10.30.0.0/24", network_id=None, repeat=1, mtu=None):
    """Docker's order for `network create --ipam-driver pyoverlay --subnet …`."""
    network_id = network_id or new_id()
    for _ in range(repeat):
        pool = client.ok("IpamDriver.RequestPool", {"AddressSpace": "pyoverlay", "Pool": subnet, "V6": False})
        gateway = client.ok("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Options": GATEWAY})
    generic = {"com.docker.network.driver.mtu": str(mtu)} if mtu else {}
    body = {
        "NetworkID": network_id,
        "Options": {"com.docker.network.generic": generic, "com.docker.network.enable_ipv6": False},
        "IPv4Data": [{"AddressSpace": "pyoverlay", "Pool": pool["Pool"], "Gateway": gateway["Address"]}],
        "IPv6Data": [],
    }
    for _ in range(repeat):
        assert client.ok("NetworkDriver.CreateNetwork", body) == {}
    return network_id, pool["PoolID"], gateway["Address"]


def create_endpoint(client, network_id, pool_id, repeat=1):
    endpoint_id, mac = new_id(), ":".join(f"{b:02x}" for b in (2, *uuid.uuid4().bytes[:5]))
    answers = set()
    for _ in range(repeat):
        answers.add(
            client.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Options": {MAC_OPTION: mac}})[
                "Address"
            ]
        )
    assert len(answers) == 1, "a resent RequestAddress must give the same address"
    address = answers.pop()
    body = {
        "NetworkID": network_id,
        "EndpointID": endpoint_id,
        "Interface": {"Address": address, "MacAddress": mac},
    }
    for _ in range(repeat):
        assert client.ok("NetworkDriver.CreateEndpoint", body) == {"Interface": {}}
    return endpoint_id, address


def remove_endpoint(client, network_id, pool_id, endpoint_id, address, repeat=1):
    ids = {"NetworkID": network_id, "EndpointID": endpoint_id}
    for _ in range(repeat):
        client.ok("NetworkDriver.Leave", ids)
    for _ in range(repeat):
        client.ok("NetworkDriver.DeleteEndpoint", ids)
    for _ in range(repeat):
        client.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address.split("/")[0]})


def remove_network(client, network_id, pool_id, gateway, repeat=1):
    for _ in range(repeat):
        client.ok("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
    for _ in range(repeat):
        client.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": gateway.split("/")[0]})
    for _ in range(repeat):
        client.ok("IpamDriver.ReleasePool", {"PoolID": pool_id})


def assert_nothing_left(agent) -> None:
    # DeleteEndpoint leaves the kernel's deletion of a veth to a thread, and an event loop that had not yet
    # seen a network's deletion may rebuild its namespace once more before it removes it
    deadline = time.monotonic() + 10
    while (
        agent.host.links() != {"lo", "ul0"} or agent.host.network_namespaces()
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.host.links() == {"lo", "ul0"}
    assert agent.host.forward_rules() == []
    assert agent.host.network_namespaces() == []
    store = agent.store()
    try:
        assert store.list_networks() == []
        assert store.list_endpoints() == []
        with pytest.raises(NotFound):
            store.get_pool("10.30.0.0/24")
    finally:
        store.close()


def test_activate_and_capabilities(agent):
    c = agent.client
    assert c.ok("Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert c.ok("NetworkDriver.GetCapabilities") == {"Scope": "local", "ConnectivityScope": "global"}
    assert c.ok("IpamDriver.GetCapabilities") == {"RequiresMACAddress": False, "RequiresRequestReplay": False}
    spaces = c.ok("IpamDriver.GetDefaultAddressSpaces")
    assert spaces["LocalDefaultAddressSpace"] == spaces["GlobalDefaultAddressSpace"] == "pyoverlay"
    status, _ = c.call("NetworkDriver.NoSuchCall")
    assert status == 404  # "not implemented" to Docker


@pytest.mark.parametrize("repeat", [1, 2], ids=["once", "twice"])
def test_lifecycle_builds_devices_and_leaves_nothing(agent, repeat):
    c = agent.client
    network_id, pool_id, gateway = create_network(c, repeat=repeat)
    assert gateway == "10.30.0.1/24"
    endpoint_id, address = create_endpoint(c, network_id, pool_id, repeat=repeat)
    assert address == "10.30.0.2/24"
    for _ in range(repeat):
        join = c.ok(
            "NetworkDriver.Join", {"NetworkID": network_id, "EndpointID": endpoint_id, "SandboxKey": "/x"}
        )
    src = join["InterfaceName"]["SrcName"]
    assert join == {"InterfaceName": {"SrcName": src, "DstPrefix": "eth"}}  # no gateway: docker_gwbridge
    # the container side in the host's namespace, bridge, VXLAN device and port in the network's
    assert src in agent.host.links()
    links = agent.host.network_links()
    assert (
        any(name.startswith("pobr") for name in links)
        and any(n.startswith("povx") for n in links)
        and any(n.startswith("poh") for n in links)
    )
    assert agent.host.mtu(src) == 1450  # underlay 1500 - 50
    assert agent.host.forward_rules() == []  # bridged frames never meet the host's iptables
    info = c.ok("NetworkDriver.EndpointOperInfo", {"NetworkID": network_id, "EndpointID": endpoint_id})
    assert info["Value"]["Address"] == address
    remove_endpoint(c, network_id, pool_id, endpoint_id, address, repeat=repeat)
    remove_network(c, network_id, pool_id, gateway, repeat=repeat)
    assert_nothing_left(agent)


def test_mtu_option_lowers_the_container_mtu(agent):
    c = agent.client
    network_id, pool_id, gateway = create_network(c, mtu=1400)
    endpoint_id, address = create_endpoint(c, network_id, pool_id)
    src = c.ok("NetworkDriver.Join", {"NetworkID": network_id, "EndpointID": endpoint_id})["InterfaceName"][
        "SrcName"
    ]
    assert agent.host.mtu(src) == 1400
    remove_endpoint(c, network_id, pool_id, endpoint_id, address)
    remove_network(c, network_id, pool_id, gateway)
    assert_nothing_left(agent)


BAD_REQUESTS = [
    ("NetworkDriver.CreateNetwork", b'{"NetworkID": "abc", "IPv4Data": [', "not valid JSON"),
    ("NetworkDriver.CreateNetwork", b"[1, 2]", "must be a JSON object"),
    ("NetworkDriver.CreateNetwork", b'{"NetworkID": 7}', "must be str"),
    (
        "NetworkDriver.CreateNetwork",
        b'{"NetworkID": "n1", "IPv4Data": [{"Pool": "10.0.0.0/99"}]}',
        "not an IPv4",
    ),
    (
        "NetworkDriver.CreateNetwork",
        b'{"NetworkID": "n1", "IPv4Data": [{"AddressSpace": "pyoverlay", "Pool": "10.77.0.0/24"}]}',
        "10.77.0.0/24",
    ),
    (
        "NetworkDriver.CreateEndpoint",
        b'{"NetworkID": "nope", "EndpointID": "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1"}',
        "not a pyoverlay network",
    ),
    (
        "NetworkDriver.Join",
        b'{"NetworkID": "nope", "EndpointID": "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1"}',
        "not known",
    ),
    (
        "NetworkDriver.EndpointOperInfo",
        b'{"NetworkID": "nope", "EndpointID": "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1"}',
        "not known",
    ),
    (
        "NetworkDriver.CreateNetwork",
        b'{"NetworkID": "n1", "Options": {"com.docker.network.generic": {"encrypted": "maybe"}}}',
        "-o encrypted=maybe: the value must be true or false",
    ),
    (
        "NetworkDriver.CreateNetwork",
        b'{"NetworkID": "n1", "Options": {"com.docker.network.generic": {"vxlan_id": "7"}}}',
        "driver option -o vxlan_id; the driver options it knows: -o com.docker.network.driver.mtu=N",
    ),
    ("IpamDriver.RequestPool", b'{"AddressSpace": "pyoverlay", "Pool": "10.1.0.0/40"}', "not a subnet"),
    ("IpamDriver.RequestPool", b'{"AddressSpace": "pyoverlay", "Pool": "10.1.0.7/24"}', "host bits"),
    (
        "IpamDriver.RequestPool",
        b'{"AddressSpace": "pyoverlay", "Pool": "fd00::/127", "V6": true}',
        "fd00::/127 is too small: pyoverlay needs at least a /126",
    ),
    (
        "IpamDriver.RequestPool",
        b'{"AddressSpace": "pyoverlay", "Pool": "fd00::/64"}',
        "Pool 'fd00::/64' is not an IPv4 subnet",
    ),
    ("IpamDriver.RequestPool", b'{"AddressSpace": "other"}', "unknown address space"),
    ("IpamDriver.RequestAddress", b'{"PoolID": "10.123.0.0/24"}', "10.123.0.0/24"),
    ("IpamDriver.RequestAddress", b'{"PoolID": 5}', "must be str"),
    ("IpamDriver.ReleasePool", b"{", "not valid JSON"),
]


@pytest.mark.parametrize(
    "method, body, message", BAD_REQUESTS, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(BAD_REQUESTS)]
)
def test_bad_input_gets_a_clear_error_and_the_agent_keeps_serving(agent, method, body, message):
    status, answer = agent.client.raw(method, body)
    assert status >= 400, answer
    key = "Error" if method.startswith("IpamDriver.") else "Err"
    assert message in answer[key], answer
    assert answer.get("Err") == answer[key]  # Docker's client reads Err from non-200 answers
    assert agent.client.ok("Plugin.Activate")
    assert_nothing_left(agent)


def test_pool_conflicts_exhaustion_and_addresses_outside(agent):
    c = agent.client
    pool = c.ok("IpamDriver.RequestPool", {"AddressSpace": "pyoverlay", "Pool": "10.30.0.0/30"})["PoolID"]
    status, answer = c.call("IpamDriver.RequestPool", {"AddressSpace": "pyoverlay", "Pool": "10.30.0.0/16"})
    assert status == 409 and "overlap" in answer["Error"]
    gw = c.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Options": GATEWAY})["Address"]
    one = c.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Options": {MAC_OPTION: "02:00:00:00:00:01"}})
    assert {gw, one["Address"]} == {"10.30.0.1/30", "10.30.0.2/30"}
    status, answer = c.call(
        "IpamDriver.RequestAddress", {"PoolID": pool, "Options": {MAC_OPTION: "02:00:00:00:00:02"}}
    )
    assert status == 409 and "no free address" in answer["Error"]
    status, answer = c.call("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "10.31.0.1"})
    assert status >= 400 and "10.31.0.1" in answer["Error"]
    status, answer = c.call(
        "IpamDriver.RequestAddress",
        {"PoolID": pool, "Address": "10.30.0.2", "Options": {MAC_OPTION: "02:00:00:00:00:03"}},
    )
    assert status == 409 and "10.30.0.2" in answer["Error"]
    c.ok("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": "10.30.0.2"})
    c.ok("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": "10.30.0.1"})
    c.ok("IpamDriver.ReleasePool", {"PoolID": pool})
    assert_nothing_left(agent)


def test_refusals_name_the_numbers_and_the_gateway(agent):
    c = agent.client
    pool = c.ok("IpamDriver.RequestPool", {"AddressSpace": "pyoverlay", "Pool": "10.30.0.0/24"})["PoolID"]
    gateway = c.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Options": GATEWAY})["Address"]
    body = {
        "NetworkID": new_id(),
        "Options": {"com.docker.network.generic": {"com.docker.network.driver.mtu": "9000"}},
        "IPv4Data": [{"AddressSpace": "pyoverlay", "Pool": pool, "Gateway": gateway}],
    }
    status, answer = c.call("NetworkDriver.CreateNetwork", body)
    assert status == 400, answer
    assert answer["Err"].startswith(
        "-o com.docker.network.driver.mtu=9000 is more than this host's underlay carries: containers can "
        "have at most 1450 (underlay MTU 1500 - 50 bytes of VXLAN headers)"
    ), answer
    ip_of_gateway = {"PoolID": pool, "Address": "10.30.0.1", "Options": {MAC_OPTION: "02:00:00:00:00:01"}}
    status, answer = c.call("IpamDriver.RequestAddress", ip_of_gateway)  # docker run --ip 10.30.0.1
    assert status == 409, answer
    assert (
        answer["Error"]
        == answer["Err"]
        == (
            "address 10.30.0.1 is the gateway of pool 10.30.0.0/24: it cannot be given to a container; "
            "choose another address"
        )
    )
    c.ok("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": "10.30.0.1"})
    c.ok("IpamDriver.ReleasePool", {"PoolID": pool})
    assert_nothing_left(agent)


def test_default_pools_are_carved_without_overlap(agent):
    c = agent.client
    pools = [c.ok("IpamDriver.RequestPool", {"AddressSpace": "pyoverlay"}) for _ in range(3)]
    subnets = {p["Pool"] for p in pools}
    assert len(subnets) == 3 and all(s.startswith("10.20") and s.endswith("/24") for s in subnets)
    for p in pools:
        c.ok("IpamDriver.ReleasePool", {"PoolID": p["PoolID"]})


def test_docker_default_ipam(agent):
    body = {
        "NetworkID": new_id(),
        "Options": {"com.docker.network.generic": {}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "172.29.0.0/16", "Gateway": "172.29.0.1/16"}],
    }
    status, answer = agent.client.call("NetworkDriver.CreateNetwork", body)
    if agent.etcd:
        assert status == 400
        assert "docker network create -d pyoverlay --ipam-driver pyoverlay" in answer["Err"]
        assert_nothing_left(agent)
    else:
        assert status == 200, answer
        agent.client.ok("NetworkDriver.DeleteNetwork", {"NetworkID": body["NetworkID"]})


def test_restart_adopts_devices_and_keeps_state(agent):
    c = agent.client
    network_id, pool_id, gateway = create_network(c)
    endpoint_id, address = create_endpoint(c, network_id, pool_id)
    before = agent.host.run("ip", "-o", "link").stdout
    agent.stop(signal.SIGKILL)
    agent.start()
    assert agent.host.run("ip", "-o", "link").stdout == before  # adopted, not recreated
    join = c.ok("NetworkDriver.Join", {"NetworkID": network_id, "EndpointID": endpoint_id})
    assert join["InterfaceName"]["SrcName"] in agent.host.links()
    remove_endpoint(c, network_id, pool_id, endpoint_id, address)
    remove_network(c, network_id, pool_id, gateway)
    assert_nothing_left(agent)


def wait_for_store(client, within: float = 10.0) -> None:
    """etcd is back: the agent's channel reconnects after its backoff (at most 0.5 s). Until then a call
    fails at once with 503, as Docker would see it."""
    deadline = time.monotonic() + within
    while client.call("IpamDriver.ReleasePool", {"PoolID": "192.0.2.0/24"})[0] != 200:  # reads the store
        assert time.monotonic() < deadline, "the agent did not reach etcd again"
        time.sleep(0.05)


def _rows(db: Path, query: str) -> list:
    """Rows of the agent's offline.db (journal and copies), read as an operator would with sqlite3."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(query).fetchall()


def test_store_unreachable_fails_cleanly_then_recovers(netns_host, etcd_server, tmp_path):
    from tests.etcd_server import EtcdServer

    from .conftest import ETCD_ADDRESS, AgentProcess

    (tmp_path / "etcd").mkdir()
    etcd = EtcdServer(host=ETCD_ADDRESS, data_dir=str(tmp_path / "etcd"))
    agent = AgentProcess(netns_host, etcd.endpoint)
    try:
        # etcd is down from the start: the socket still answers at once (a managed plugin must bind in ~10 s)
        assert agent.start() < 10
        c = agent.client
        for method, body in [
            ("IpamDriver.RequestPool", {"AddressSpace": "pyoverlay", "Pool": "10.30.0.0/24"}),
            (
                "NetworkDriver.CreateNetwork",
                {
                    "NetworkID": new_id(),
                    "IPv4Data": [
                        {"AddressSpace": "pyoverlay", "Pool": "10.30.0.0/24", "Gateway": "10.30.0.1/24"}
                    ],
                },
            ),
            ("IpamDriver.RequestAddress", {"PoolID": "10.30.0.0/24", "Options": GATEWAY}),
        ]:
            status, answer = c.call(method, body)
            assert status == 503, answer
            assert "etcd" in answer.get("Err", "") and "unreachable" in answer["Err"], answer
        etcd.start()
        wait_for_store(c)
        network_id, pool_id, gateway = create_network(c)
        offline = Path(agent.state_dir) / "offline.db"
        wait_until(lambda: _rows(offline, "SELECT key FROM copies WHERE key LIKE 'blocks/%'"), 15, "blocks")
        etcd.kill()
        # a container starts and stops with etcd gone: served from this host's block, journalled
        endpoint_id = new_id()
        address = c.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Options": {}})["Address"]
        body = {"NetworkID": network_id, "EndpointID": endpoint_id, "Interface": {"Address": address}}
        assert "MacAddress" in c.ok("NetworkDriver.CreateEndpoint", body)["Interface"]
        assert c.ok(
            "NetworkDriver.Join", {"NetworkID": network_id, "EndpointID": endpoint_id, "SandboxKey": ""}
        )
        status, answer = c.call("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "10.30.0.200"})
        assert status == 503 and "etcd is unreachable" in answer["Error"] and "--ip" in answer["Error"], (
            answer
        )
        assert _rows(offline, "SELECT seq FROM journal")  # kept on disk until etcd is back
        c.ok("NetworkDriver.Leave", {"NetworkID": network_id, "EndpointID": endpoint_id})
        c.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": network_id, "EndpointID": endpoint_id})
        c.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address.split("/")[0]})
        etcd.start()
        wait_until(lambda: not _rows(offline, "SELECT seq FROM journal"), 15, "the journal published")
        wait_for_store(c)
        half_made = agent.host.links() | agent.host.network_links()
        assert not [n for n in half_made if n.startswith(("poh", "poc"))]  # no half-made endpoint
        remove_network(c, network_id, pool_id, gateway)
        assert_nothing_left(agent)
    finally:
        agent.stop()
        etcd.close()
