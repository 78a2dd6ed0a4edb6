"""`pyoverlay expose` and `hide` on the embedded store, without an agent (its registration and host-id
written by hand): what they print, their exit codes and their errors."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from kvstore import GATEWAY_OWNER, Host, Network, open_store
from plugin.settings import Settings

from .test_cli import run

SUBNET = "10.40.0.0/24"


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for f in fields(Settings):
        monkeypatch.delenv(f.name.upper(), raising=False)


@pytest.fixture
def state(tmp_path: Path) -> str:
    """A state dir as the agent of host "me1" leaves it, with network "ov" bound here and "far" not."""
    state = tmp_path / "state"
    store = open_store([], str(state))
    store.register_host(Host("me1", "192.0.2.1"), ttl=600)
    for host, docker_id, subnet, name in (
        ("me1", "dockOV", SUBNET, "ov"),
        ("other", "dockFar", "10.41.0.0/24", "far"),
    ):
        pool = store.request_pool(host, subnet, None, "10.200.0.0/16", 24)
        store.reserve_address(pool.pool_id, GATEWAY_OWNER, host)
        store.create_network(host, docker_id, Network(docker_id, 0, subnet, pool.pool_id))
        store.set_network_name(docker_id, name)
    store.close()
    (state / "host-id").write_text("me1\n")
    return str(state)


def test_expose_prints_the_address_again_and_hide_frees_it(state: str, capsys) -> None:
    code, out, err = run(capsys, "expose", "ov", "--state-dir", state)
    assert code == 0 and err == "" and out == "10.40.0.2/24\n"  # the gateway has .1
    assert run(capsys, "expose", "ov", "--state-dir", state) == (0, "10.40.0.2/24\n", "")
    store = open_store([], state)
    assert store.list_addresses(SUBNET)["10.40.0.2"] == "host-me1-dockOV"
    store.close()
    assert run(capsys, "hide", "ov", "--state-dir", state) == (
        0,
        "10.40.0.2/24 is no longer this host's address on ov\n",
        "",
    )
    assert run(capsys, "hide", "ov", "--state-dir", state) == (0, "this host has no address on ov\n", "")
    assert run(capsys, "expose", "ov", "--ip", "10.40.0.77", "--state-dir", state)[1] == "10.40.0.77/24\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("expose", "nope"), "pyoverlay: no pyoverlay network 'nope'"),
        (("expose", "far"), "pyoverlay: network far is not on this host (host id me1)"),
        (("expose", "ov", "--ip", "10.40.0.1"), "pyoverlay: address 10.40.0.1 is the gateway"),
        (("hide", "nope"), "pyoverlay: no pyoverlay network 'nope'"),
    ],
)
def test_errors_are_one_clear_line(state: str, capsys, argv: tuple[str, ...], message: str) -> None:
    code, out, err = run(capsys, *argv, "--state-dir", state)
    assert code == 1 and out == "" and err.startswith(message) and err.count("\n") == 1


def test_a_state_dir_no_agent_ran_on_is_an_error(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "expose", "ov", "--state-dir", str(tmp_path))
    assert code == 1 and "the agent has never run with this STATE_DIR" in err
