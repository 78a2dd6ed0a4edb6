"""T11: containers cannot spoof peers. A container with NET_ADMIN takes a peer's MAC and IP
(``ip link set eth0 address``, ``ip addr add``) and sends crafted frames as the peer (UDP, ARP replies):
none reach a neighbour on its host or on another, and none of the frames sent to the peer reach it. The
peer was started with Docker's own ``--ip`` and ``--mac-address`` and keeps talking throughout."""

from __future__ import annotations

import pytest

from tests.faults.conftest import count
from tests.faults.containers import listening, result, run, start, tool
from tests.lab.system import wait_until
from tests.multihost.test_overlay import SLEEP, converge_ping, create_everywhere, ip_of, ping

pytestmark = [pytest.mark.lab, pytest.mark.faults]

SUBNET = "10.72.0.0/24"
VICTIM_IP, VICTIM_MAC = "10.72.0.10", "02:aa:bb:cc:dd:10"  # Docker's own choices: --ip, --mac-address


def derived_mac(ip: str) -> str:
    return ":".join(f"{b:02x}" for b in (0x02, 0x42, *map(int, ip.split("."))))


def iface_of(h, container: str, ip: str) -> str:
    lines = h.docker("exec", container, "ip", "-o", "-4", "addr", "show").stdout.splitlines()
    [name] = [line.split()[1] for line in lines if f" {ip}/" in line]
    return name


class Box:
    def __init__(self, h, name: str, ip: str, mac: str) -> None:
        self.h, self.name, self.ip, self.mac = h, name, ip, mac
        self.iface = iface_of(h, name, ip)


def seen(listeners: list[Box], needle: bytes, sender: Box, kind: str, frames: int, **frame: str) -> list[int]:
    """Frames containing needle each listener saw while sender sent ``frames`` crafted frames."""
    seconds = str(2.0 + frames * 0.01)
    counters = [
        start(tool(b.h, b.name, "tests.spoof", "count", "--iface", b.iface, "--needle", needle.hex(),
                   "--seconds", seconds))
        for b in listeners
    ]  # fmt: skip
    for c in counters:
        listening(c)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in frame.items()]
    run(tool(sender.h, sender.name, "tests.spoof", "send", "--iface", sender.iface, "--kind", kind,
             f"--count={frames}", *args))  # fmt: skip
    return [result(c) for c in counters]


def test_a_container_cannot_spoof_a_peer(make_lab, figures):  # noqa: F811
    frames = count("t11_frames", 100, 10)
    lab = make_lab(2, etcd=True)
    lab.start_agents()
    h1, h2 = lab.hosts
    try:
        create_everywhere(lab, "spf", "--subnet", SUBNET)
        net = ("--network", "spf")
        h1.docker("run", "-d", "--name", "victim", *net, "--ip", VICTIM_IP, "--mac-address", VICTIM_MAC,
                  lab.image, *SLEEP)  # fmt: skip
        h1.docker("run", "-d", "--name", "spoofer", *net, "--cap-add", "NET_ADMIN", lab.image, *SLEEP)
        h1.docker("run", "-d", "--name", "local", *net, lab.image, *SLEEP)
        h2.docker("run", "-d", "--name", "remote", *net, lab.image, *SLEEP)
        ips = {name: ip_of(h, name, "spf") for h, name in ((h1, "spoofer"), (h1, "local"), (h2, "remote"))}
        victim = Box(h1, "victim", VICTIM_IP, VICTIM_MAC)
        spoofer = Box(h1, "spoofer", ips["spoofer"], derived_mac(ips["spoofer"]))
        local = Box(h1, "local", ips["local"], derived_mac(ips["local"]))
        remote = Box(h2, "remote", ips["remote"], derived_mac(ips["remote"]))
        # the control: everyone talks, the --ip/--mac-address container too, locally and across hosts
        pings = [(h2, "remote", VICTIM_IP), (h1, "local", VICTIM_IP), (h1, "victim", remote.ip)]
        for h, name, target in [*pings, (h1, "spoofer", remote.ip), (h1, "spoofer", local.ip)]:
            converge_ping(h, name, target)
        own = {"src_mac": spoofer.mac, "src_ip": spoofer.ip, "marker": "own"}
        controls = seen([local], b"own", spoofer, "udp4", frames, dst_mac=local.mac, dst_ip=local.ip, **own)

        # the spoofer takes the peer's MAC and address, as any NET_ADMIN container can
        h1.docker("exec", "spoofer", "ip", "link", "set", spoofer.iface, "address", VICTIM_MAC)
        h1.docker("exec", "spoofer", "ip", "addr", "add", f"{VICTIM_IP}/24", "dev", spoofer.iface)
        attempts, delivered = 0, 0
        as_peer = {"src_mac": VICTIM_MAC, "src_ip": VICTIM_IP, "marker": "as-peer"}
        for target in (local, remote):
            got = seen([target], b"as-peer", spoofer, "udp4", frames, dst_mac=target.mac, dst_ip=target.ip,
                       **as_peer)  # fmt: skip
            attempts, delivered = attempts + frames, delivered + sum(got)
        # ARP replies claiming the peer's address (with the spoofer's own MAC, and with the peer's)
        for sender_mac in (spoofer.mac, VICTIM_MAC):
            needle = bytes.fromhex(sender_mac.replace(":", "")) + bytes(map(int, VICTIM_IP.split(".")))
            for target in (local, remote):
                got = seen([target], needle, spoofer, "arp", frames, src_mac=sender_mac, src_ip=VICTIM_IP,
                           dst_mac=target.mac, dst_ip=target.ip)  # fmt: skip
                attempts, delivered = attempts + frames, delivered + sum(got)
        # the peer's frames, from a neighbour on its host and from another: to the peer, never the spoofer
        to_peer = {"dst_mac": VICTIM_MAC, "dst_ip": VICTIM_IP}
        peer_got, stolen = 0, 0
        for sender in (local, remote):
            marker = f"for-peer-{sender.name}"
            frame = {"src_mac": sender.mac, "src_ip": sender.ip, "marker": marker, **to_peer}
            got_victim, got_spoofer = seen(
                [victim, spoofer], marker.encode(), sender, "udp4", frames, **frame
            )
            peer_got, stolen = peer_got + got_victim, stolen + got_spoofer
        # the peer is still reached, and its answers come from it
        for h, name in ((h2, "remote"), (h1, "local")):
            wait_until(lambda h=h, name=name: ping(h, name, VICTIM_IP, check=False).returncode == 0, 10, name)
        figures(
            "T11",
            "NET_ADMIN container with the peer's MAC and IP: UDP and ARP as the peer, local and remote",
            own_frames_sent=frames,
            own_frames_delivered=controls[0],
            spoof_attempts=attempts,
            spoof_delivered=delivered,
            peer_frames_sent=2 * frames,
            peer_frames_delivered_to_peer=peer_got,
            peer_frames_delivered_to_spoofer=stolen,
        )
        assert controls == [frames], "the spoofer's own frames must pass (the control)"
        assert peer_got == 2 * frames, "the peer must get its frames"
        assert (delivered, stolen) == (0, 0)
    finally:
        for h in lab.hosts:
            print(f"--- {h.name}\n{h.agent_log_tail(20)}")
