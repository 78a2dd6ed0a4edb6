"""A WireGuard tunnel's life on one host: ensure() is idempotent, a dead wireguard-go (or a deleted device)
is noticed and replaced, an agent that dies and comes back adopts the running device, bad input leaves
nothing behind. Both implementations where the kernel has the module (as in test_wireguard.py)."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2.netns import create_socket

from driver import wireguard_go
from driver.errors import DataplaneError
from driver.wireguard import Tunnel, generate_private_key

from .nsutil import ping
from .wgutil import PORT, TUNNEL_MTU, WgHost, require_mode, tear_down, tunnel_name

pytestmark = pytest.mark.netlink
ROOT = Path(__file__).resolve().parents[2]


def device(tunnel: Tunnel) -> tuple[int, int | None, int, list[str]]:
    """(link index, wireguard-go pid, MTU, addresses) of the tunnel's device."""
    with IPRoute(netns=tunnel.netns, flags=0) as ipr:
        link = ipr.link("get", ifname=tunnel.name)[0]
        addresses = [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.addr("dump", index=link["index"])
        ]
    pid = wireguard_go.daemon_pid(tunnel.name, tunnel.netns) if tunnel.mode == "userspace" else None
    return (
        link["index"],
        pid,
        link.get_attr("IFLA_MTU"),
        sorted(a for a in addresses if not a.startswith("fe80")),
    )


def test_ensure_twice_changes_nothing_and_a_changed_setting_only_that(pair: tuple[WgHost, WgHost]) -> None:
    a, b = pair
    assert ping(a.netns, b.tunnel_ip, timeout=10)
    before, handshake = device(a.tunnel), a.tunnel.stats()[b.public].last_handshake
    a.tunnel.ensure(a.key, PORT, f"{a.tunnel_ip}/24", TUNNEL_MTU)
    assert device(a.tunnel) == before
    assert a.tunnel.stats()[b.public].last_handshake == handshake, "the session was disturbed"
    assert b.tunnel.set_peers(a.as_peer()) == ([], [])

    a.tunnel.ensure(a.key, PORT, "10.9.0.11/24", TUNNEL_MTU - 100)
    assert device(a.tunnel) == (before[0], before[1], TUNNEL_MTU - 100, ["10.9.0.11/24"])
    assert a.tunnel.public_key() == a.public


def test_a_dead_device_is_noticed_and_made_anew(pair: tuple[WgHost, WgHost]) -> None:
    a, b = pair
    assert ping(a.netns, b.tunnel_ip, timeout=10)
    assert a.tunnel.alive() and not a.tunnel.supervise()
    if a.tunnel.mode == "userspace":
        pid = wireguard_go.daemon_pid(a.tunnel.name, a.tunnel.netns)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # its TUN device goes with it
        deadline = time.monotonic() + 5
        while wireguard_go.daemon_pid(a.tunnel.name, a.tunnel.netns) and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        with IPRoute(netns=a.tunnel.netns, flags=0) as ipr:
            ipr.link("del", ifname=a.tunnel.name)
    assert not a.tunnel.alive()
    assert not ping(a.netns, b.tunnel_ip, timeout=1)
    assert a.tunnel.supervise(), "supervise() did not notice"
    assert a.tunnel.alive() and a.tunnel.peers() == b.as_peer()
    assert ping(a.netns, b.tunnel_ip, timeout=10), "traffic did not come back"
    assert not a.tunnel.supervise()


_AGENT = """
import sys, time
sys.path.insert(0, {root!r})
from driver.wireguard import Tunnel, TunnelPeer
tunnel = Tunnel({name!r}, {netns!r}, mode={mode!r})
tunnel.ensure({key!r}, {port}, "10.9.0.1/24", {mtu})
tunnel.set_peers({{{peer_key!r}: TunnelPeer("192.0.2.2:{port}", ("10.9.0.2/32",))}})
print("ready", flush=True)
time.sleep(60)
"""


def test_a_restarted_agent_adopts_the_running_device(pair: tuple[WgHost, WgHost]) -> None:
    a, b = pair
    mode = a.tunnel.mode
    a.tunnel.remove()
    # an "agent" in its own process group makes the device, then dies with its whole group (kill -9)
    name, key = tunnel_name(), generate_private_key()
    script = _AGENT.format(
        root=str(ROOT),
        name=name,
        netns=a.tunnel.netns,
        mode=mode,
        key=key,
        port=PORT,
        mtu=TUNNEL_MTU,
        peer_key=b.public,
    )
    agent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True, text=True
    )
    adopted = Tunnel(name, a.netns)  # mode not given: found from the running device
    a.extra.append(adopted)
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == "ready"
        pid = wireguard_go.daemon_pid(name, adopted.netns)
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
    b.tunnel.set_peers({adopted.public_key() or "": a.as_peer()[a.public]})
    assert ping(a.netns, b.tunnel_ip, timeout=10), "the tunnel stopped with the agent"

    assert adopted.mode == mode and adopted.alive()
    before = device(adopted)
    assert before[1] == pid, "wireguard-go did not survive its agent"
    adopted.ensure(key, PORT, "10.9.0.1/24", TUNNEL_MTU)
    assert adopted.set_peers(b.as_peer()) == ([], [])
    assert device(adopted) == before, "the restarted agent made a second device"
    assert ping(a.netns, b.tunnel_ip, timeout=5)


@pytest.mark.parametrize("mode", ["userspace", "kernel"])
def test_bad_input_leaves_nothing_behind(mode: str, ns: str) -> None:
    require_mode(mode)
    tunnel = Tunnel(tunnel_name(), ns, mode=mode)
    key = generate_private_key()
    bad = [
        ("not-a-key", PORT, "10.9.0.1/24", TUNNEL_MTU),
        (key, 0, "10.9.0.1/24", TUNNEL_MTU),
        (key, PORT, "10.9.0.300/24", TUNNEL_MTU),
        (key, PORT, "10.9.0.1/24", 100),
    ]
    for args in bad:
        with pytest.raises(ValueError):
            tunnel.ensure(*args)
    with pytest.raises(ValueError):
        Tunnel("a-name-far-too-long", ns)
    assert not tunnel.alive()

    try:
        # a port another socket holds: the device this call made goes again
        with create_socket(ns, socket.AF_INET, socket.SOCK_DGRAM, 0, flags=0) as holder:
            holder.bind(("0.0.0.0", PORT))
            with pytest.raises(DataplaneError, match="in use"):
                tunnel.ensure(key, PORT, "10.9.0.1/24", TUNNEL_MTU)
        with IPRoute(netns=ns, flags=0) as ipr:
            assert not ipr.link_lookup(ifname=tunnel.name), "a half-made device stayed"
        assert wireguard_go.daemon_pid(tunnel.name, tunnel.netns) is None
        for path in (wireguard_go.log_path(tunnel.name), wireguard_go.socket_path(tunnel.name)):
            assert not os.path.exists(path), f"{path} left behind"
    finally:
        tear_down([WgHost(ns, tunnel, key, "", "", "")])  # also kills a wireguard-go left running
    tunnel.remove()  # idempotent


def test_a_name_taken_in_another_namespace_is_refused(make_netns: Callable[[], str]) -> None:
    require_mode("userspace")
    name = tunnel_name()
    first, second = Tunnel(name, make_netns(), mode="userspace"), Tunnel(name, make_netns(), mode="userspace")
    try:
        first.ensure(generate_private_key(), PORT, "10.9.0.1/24", TUNNEL_MTU)
        # one mount namespace, one socket path: wireguard-go refuses, and says why
        with pytest.raises(DataplaneError, match="socket in use"):
            second.ensure(generate_private_key(), PORT, "10.9.0.2/24", TUNNEL_MTU)
        assert first.alive() and not second.alive()
    finally:
        first.remove()
        second.remove()
