"""The agent's read-only /pyoverlay.Status: answered on GET, even while the host's identity is refused
(it says why), and absent when the app is built without it."""

from __future__ import annotations

import json

from plugin.agent_client import STATUS_PATH
from plugin.app import create_app
from plugin.errors import IdentityRefused
from tests.service.conftest import Host


def refuse() -> None:
    raise IdentityRefused("cloned")


def test_status_answers_json_even_while_requests_are_refused(host_a: Host) -> None:
    client = create_app(
        host_a.network,
        host_a.ipam,
        check_identity=refuse,
        status=lambda: {"host_id": "h1", "refusal": "cloned"},
    ).test_client()
    for method in ("GET", "POST"):
        resp = client.open(STATUS_PATH, method=method)
        assert resp.status_code == 200 and json.loads(resp.data) == {"host_id": "h1", "refusal": "cloned"}
    assert client.post("/NetworkDriver.CreateNetwork", data=b"{}").status_code >= 400  # others refused


def test_without_a_status_source_the_path_is_not_implemented(host_a: Host) -> None:
    assert create_app(host_a.network, host_a.ipam).test_client().get(STATUS_PATH).status_code == 404
