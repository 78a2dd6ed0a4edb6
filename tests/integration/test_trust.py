"""Real agents on etcd as docs/install.md sets it up (client certificates, auth on, the agents' user limited
to /pyoverlay/): the whole workflow works as that user, the operator commands too, and a host id cloned
with a state directory is refused while its first owner is alive."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvstore import Endpoint, Store, open_store
from tests.etcd_server import SecuredEtcd, secured_etcd

from .conftest import PYOVERLAY, AgentProcess, NetnsHost, ip
from .test_api import create_endpoint, create_network

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CLONED_ID = "c10ed0000000cafe"
# Underlays of their own (NetnsHost's default is 10.98.0.0/24): these tests share no route with others.
FIRST, SECOND, LONE = 95, 96, 94
FIRST_ADDRESS, SECOND_ADDRESS = f"10.{FIRST}.0.1", f"10.{SECOND}.0.1"  # the agents' VTEPs
SECURED_ADDRESS = "10.93.0.1"  # the secured etcd's, beside conftest's ETCD_ADDRESS (not shared either)
REMOTE_VTEP = "192.0.2.50"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredEtcd]:
    """On an address of its own on the root namespace's lo, routed from every test namespace."""
    subprocess.run(
        ["ip", "addr", "del", f"{SECURED_ADDRESS}/32", "dev", "lo"], capture_output=True, check=False
    )
    ip("addr", "add", f"{SECURED_ADDRESS}/32", "dev", "lo")
    try:
        server = secured_etcd(tmp_path_factory.mktemp("secured"), host=SECURED_ADDRESS)
        try:
            yield server
        finally:
            server.close()
    finally:
        ip("addr", "del", f"{SECURED_ADDRESS}/32", "dev", "lo")


@pytest.fixture
def clean(secured: SecuredEtcd, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SecuredEtcd:
    secured.server.etcdctl("del", "--prefix", "/pyoverlay/")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-dockerd.sock")  # the API only: no daemon
    return secured


def agent_store(secured: SecuredEtcd) -> Store:
    return open_store([secured.server.endpoint], None, **secured.store_tls())


def pyoverlay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    return subprocess.run(
        [PYOVERLAY, *args], env={**clean_env, **env}, capture_output=True, text=True, timeout=60
    )


def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        time.sleep(0.2)


def fdb(host: NetnsHost) -> str:
    return "".join(
        subprocess.run(
            ["nsenter", f"--net={host.netns_dir}/{netns}", "bridge", "fdb", "show"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for netns in host.network_namespaces()
    )


@pytest.fixture
def lone_host(tmp_path: Path) -> Iterator[NetnsHost]:
    host = NetnsHost(tmp_path, subnet=LONE)
    try:
        yield host
    finally:
        host.close()


def test_the_agent_and_the_operator_commands_work_as_the_least_privilege_user(
    clean: SecuredEtcd, lone_host: NetnsHost
) -> None:
    netns_host = lone_host
    agent = AgentProcess(netns_host, env=clean.agent_env())
    agent.start()
    store = agent_store(clean)
    try:
        host_id = Path(agent.state_dir, "host-id").read_text().strip()
        eventually(lambda: [h.host_id for h in store.list_hosts()] == [host_id], 10, "host registered")
        network_id, pool_id, _ = create_network(agent.client)  # transactions: pool, gateway, network
        create_endpoint(agent.client, network_id, pool_id)
        cluster_id = store.bindings(host_id)[network_id]
        # A peer's endpoint reaches the kernel only through the event loop's watches
        peer = Endpoint("peer" * 16, cluster_id, "remote1", REMOTE_VTEP, "02:00:00:00:00:50", "10.30.0.50/24")
        store.put_endpoint(peer)
        eventually(lambda: f"dst {REMOTE_VTEP}" in fdb(netns_host), 15, "the peer's FDB entry")

        env = clean.agent_env()
        hosts = pyoverlay(env, "hosts")
        assert hosts.returncode == 0, hosts.stderr
        assert host_id in hosts.stdout and "remote1" in hosts.stdout
        forget = pyoverlay(env, "forget-host", "remote1")
        assert forget.returncode == 0, forget.stderr
        eventually(lambda: f"dst {REMOTE_VTEP}" not in fdb(netns_host), 15, "the forgotten peer's entry gone")

        no_cert = pyoverlay({k: v for k, v in env.items() if k not in ("ETCD_CERT", "ETCD_KEY")}, "hosts")
        assert no_cert.returncode != 0
        assert "etcd requires a client certificate (--client-cert-auth) and none is set" in no_cert.stderr
        assert "Traceback" not in no_cert.stderr
    finally:
        store.close()
        agent.stop()
    log = agent.log.read_text()
    assert "PERMISSION_DENIED" not in log and "Traceback" not in log, log[-3000:]


def refusal(agent: AgentProcess) -> tuple[int, str]:
    status, answer = agent.client.call("IpamDriver.RequestPool", {"AddressSpace": "pyoverlay", "V6": False})
    return status, (answer or {}).get("Error", "")


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[list[NetnsHost]]:
    hosts: list[NetnsHost] = []
    try:
        for name, subnet in (("a", FIRST), ("b", SECOND)):
            (tmp_path / name).mkdir()
            hosts.append(NetnsHost(tmp_path / name, subnet=subnet))
        yield hosts
    finally:
        for host in hosts:
            host.close()


def test_a_cloned_host_id_is_refused_until_its_owner_is_gone(
    clean: SecuredEtcd, two_hosts: list[NetnsHost]
) -> None:
    agents = [AgentProcess(h, env={**clean.agent_env(), "HOST_TTL": "3"}) for h in two_hosts]
    for agent in agents:  # one image, cloned: the same host-id file in both state directories
        Path(agent.state_dir).mkdir(parents=True)
        Path(agent.state_dir, "host-id").write_text(CLONED_ID + "\n")
    first, clone = agents
    store = agent_store(clean)
    try:
        first.start()
        eventually(lambda: [h.address for h in store.list_hosts()] == [FIRST_ADDRESS], 10, "first registered")
        clone.start()  # Activate answers: Docker must be able to load the plugin to show the error
        status, message = refusal(clone)
        assert status == 409
        assert f"host id {CLONED_ID} is already registered, alive, by another host at {FIRST_ADDRESS}" in (
            message
        )
        assert "cloned" in message and "remove STATE_DIR/host-id" in message
        assert "restart the agent" in message
        assert [h.address for h in store.list_hosts()] == [FIRST_ADDRESS]  # never overwritten
        assert "ERROR" in clone.log.read_text() and "cloned" in clone.log.read_text()
        create_network(first.client)  # the first keeps working

        first.stop(signal.SIGKILL)  # its record outlives it by HOST_TTL, then the clone takes the id
        eventually(lambda: refusal(clone)[0] == 200, 20, "the clone serving once the record expired")
        eventually(lambda: [h.address for h in store.list_hosts()] == [SECOND_ADDRESS], 5, "clone registered")

        first.start()  # back with the id the clone now holds: this time the first is refused
        assert refusal(first)[0] == 409 and SECOND_ADDRESS in refusal(first)[1]
        first.stop()
        Path(first.state_dir, "host-id").unlink()  # the fix the message gives
        first.start()
        assert refusal(first)[0] == 200
        eventually(lambda: len(store.list_hosts()) == 2, 10, "both hosts registered")
    finally:
        store.close()
        for agent in agents:
            agent.stop()
            if agent.log.exists():
                print(agent.log.read_text()[-3000:])
