"""config.json (the managed plugin) must offer every setting, with Settings' defaults."""

import json
from dataclasses import fields
from pathlib import Path

from plugin.settings import Settings

CONFIG = json.loads((Path(__file__).resolve().parents[2] / "config.json").read_text())


def test_every_setting_is_in_config_json_with_the_same_default():
    env = {e["name"]: e for e in CONFIG["env"]}
    for f in fields(Settings):
        name = f.name.upper()
        assert name in env, f"{name} missing from config.json"
        if name == "NETNS_DIR":
            continue  # below: in the state mount
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        assert env[name]["value"] == str(default), name
        if name not in ("SOCKET", "STATE_DIR"):
            assert env[name].get("settable") == ["value"], name


def test_networks_namespaces_live_in_the_state_mount_shared_with_the_host():
    # mounted there, a network's namespace is held by the host's mount table: it outlives a disable or a
    # crash of the plugin. Propagation back to the host needs the mount rshared and the plugin's root
    # rshared, which Docker sets only for a plugin with a propagated mount.
    env = {e["name"]: e for e in CONFIG["env"]}
    state = next(m for m in CONFIG["mounts"] if m["name"] == "state")
    assert env["NETNS_DIR"]["value"] == state["destination"] + "/netns" and "settable" not in env["NETNS_DIR"]
    assert "rshared" in state["options"]
    assert CONFIG["propagatedMount"]


def test_plugin_implements_both_drivers_with_net_admin_and_the_dns_port():
    assert CONFIG["interface"]["types"] == ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"]
    assert CONFIG["interface"]["socket"] == "pyoverlay.sock"
    assert CONFIG["network"]["type"] == "host"
    # NET_BIND_SERVICE: the name service listens on port 53 (the daemon's `dns` setting has no port)
    # SYS_ADMIN: each network's namespace is made (unshare), mounted and entered (setns)
    assert CONFIG["linux"]["capabilities"] == ["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"]
    # wireguard-go opens /dev/net/tun (the device cgroup must allow it); making the TUN device takes
    # NET_ADMIN, which the plugin holds already
    assert [device["path"] for device in CONFIG["linux"]["devices"]] == ["/dev/net/tun"]
