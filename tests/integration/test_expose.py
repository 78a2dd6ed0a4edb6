"""`pyoverlay expose` and `hide` while a real agent runs, on the embedded store (a file the agent polls)
and on etcd: the agent puts the address on the network's bridge, keeps it across its restart and takes
it off again. No dockerd: the network is made through the plugin API, as dockerd would."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.names import exposure_names
from tests.lab.system import wait_until
from tests.netlink.nsutil import ping

from .conftest import PYOVERLAY, AgentProcess, NetnsHost, agent_on_store
from .test_api import create_network

pytestmark = pytest.mark.integration


@pytest.fixture(params=["embedded", "etcd"])
def agent(
    request: pytest.FixtureRequest, netns_host: NetnsHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AgentProcess]:
    # No daemon: Docker sync must neither touch this machine's dockerd nor sweep the binding made here
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-dockerd.sock")
    yield from agent_on_store(request, netns_host, signal.SIGKILL)


def pyoverlay(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STATE_DIR": agent.state_dir, "ETCD_ENDPOINTS": agent.etcd}
    return subprocess.run([PYOVERLAY, *args], capture_output=True, text=True, timeout=30, env=env)


def bridge_addresses(agent: AgentProcess, vni: int) -> str:
    """The addresses of the host's side of its veth into the network (none: no such device)."""
    return agent.host.run("ip", "-4", "-o", "addr", "show", "dev", exposure_names(vni)[0], check=False).stdout


def test_expose_and_hide_while_the_agent_runs(agent: AgentProcess) -> None:
    network_id, pool_id, _ = create_network(agent.client, "10.33.0.0/24")
    store = agent.store()
    vni = store.get_network(network_id).vni
    wait_until(lambda: bool(store.list_hosts()), 10, "the agent's registration")
    store.close()

    done = pyoverlay(agent, "expose", network_id[:12])
    assert done.returncode == 0, done.stderr
    address = done.stdout.strip()
    # the gateway has .1; an exposure is reserved through the whole pool, so outside the address blocks
    # hosts hold (the agent's keeper holds .0/28 and .16/28 by now, or not yet)
    assert address in ("10.33.0.2/24", "10.33.0.32/24"), address
    started = time.monotonic()
    wait_until(lambda: address in bridge_addresses(agent, vni), 10, "the address on the bridge")
    print(f"expose -> address on the bridge: {time.monotonic() - started:.2f} s ({agent.etcd or 'embedded'})")
    assert ping(agent.host.name, address.split("/")[0], timeout=5)  # a local address of the host now
    assert pyoverlay(agent, "expose", network_id[:12]).stdout.strip() == address  # idempotent

    agent.stop()  # the address stays in the kernel; taken off by hand, the restarted agent puts it back
    agent.host.run("ip", "addr", "flush", "dev", exposure_names(vni)[0])
    agent.start()
    wait_until(lambda: address in bridge_addresses(agent, vni), 10, "the address back after a restart")

    hidden = pyoverlay(agent, "hide", network_id[:12])
    assert hidden.returncode == 0 and hidden.stdout.startswith(f"{address} is no longer"), hidden.stderr
    wait_until(lambda: "inet " not in bridge_addresses(agent, vni), 10, "the address gone from the bridge")
    store = agent.store()
    assert address.split("/")[0] not in store.list_addresses(pool_id)
    store.close()
