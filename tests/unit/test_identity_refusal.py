"""While another host holds this host's id, the app refuses every request but the fixed ones Docker needs
to load the plugin (the agent side runs for real in tests/integration/test_trust.py)."""

from __future__ import annotations

from typing import Any

import pytest

from plugin.app import create_app
from plugin.errors import IdentityRefused

MESSAGE = "host id h1 is already registered, alive, by another host at 192.0.2.1: … remove STATE_DIR/host-id"


class Unreachable:
    """A service that must not be called while the identity is refused."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"service called while refused: {name}")


def refuse() -> None:
    raise IdentityRefused(MESSAGE)


@pytest.fixture
def client():
    return create_app(Unreachable(), Unreachable(), check_identity=refuse).test_client()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/NetworkDriver.CreateNetwork", "Err"),
        ("/NetworkDriver.Join", "Err"),
        ("/IpamDriver.RequestPool", "Error"),
        ("/IpamDriver.RequestAddress", "Error"),
    ],
)
def test_requests_are_refused_with_the_cause(client, path: str, field: str) -> None:
    answer = client.post(path, data=b'{"NetworkID": "n1"}')
    assert answer.status_code == 409
    assert answer.get_json()[field] == MESSAGE


def test_docker_can_still_load_the_plugin(client) -> None:
    assert client.post("/Plugin.Activate").get_json() == {"Implements": ["NetworkDriver", "IpamDriver"]}
