"""What the HTTP layer answers to requests no dockerd sends, found by the T12 fuzzer (tests/faults/
test_fuzz.py): every answer is a JSON error of the protocol's shape with a 4xx status, never an HTML page,
a 500 or a megabyte of the request echoed back."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from plugin.app import CONTENT_TYPE, create_app
from plugin.errors import BadRequest
from tests.service.conftest import Host


@pytest.fixture
def client(host_a: Host) -> FlaskClient:
    return create_app(host_a.network, host_a.ipam).test_client()


def answer(resp) -> dict:
    assert resp.content_type == CONTENT_TYPE, resp.data[:200]
    return json.loads(resp.data)


@pytest.mark.parametrize("path", ["/NetworkDriver.NoSuchCall", "/", "/Plugin.Activate/"])
def test_an_unknown_path_is_a_json_404_naming_it(client: FlaskClient, path: str):
    resp = client.post(path, data=b"{}")
    assert resp.status_code == 404  # Docker reads 404 as "not implemented"
    assert answer(resp) == {"Err": f"pyoverlay does not implement {path}"}


def test_an_unknown_ipam_path_answers_the_ipam_error_field(client: FlaskClient):
    resp = client.post("/IpamDriver.NoSuchCall", data=b"{}")
    assert resp.status_code == 404
    assert answer(resp)["Error"] == "pyoverlay does not implement /IpamDriver.NoSuchCall"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS"])
def test_a_method_other_than_post_is_a_json_405(client: FlaskClient, method: str):
    resp = client.open("/NetworkDriver.GetCapabilities", method=method, data=b"{}")
    assert resp.status_code == 405
    assert answer(resp) == {"Err": f"{method} /NetworkDriver.GetCapabilities: plugin calls are POST"}


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/Plugin.Activate", b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        ("/NetworkDriver.CreateNetwork", b'{"NetworkID":' * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
        ("/IpamDriver.ReleasePool", b'{"PoolID": "\\ud800"}', "lone surrogate"),
        ("/NetworkDriver.Join", b'{"NetworkID": "n", "\\udfff": 1}', "lone surrogate"),
        ("/IpamDriver.RequestPool", b'{"Pool": "\xff\xfe"}', "not valid JSON in UTF-8"),
        ("/IpamDriver.RequestPool", '{"Pool": "10.1.0.0/24"}'.encode("utf-16"), "not valid JSON in UTF-8"),
    ],
    ids=["deep-list", "deep-object", "lone-surrogate-value", "lone-surrogate-key", "not-utf8", "utf16"],
)
def test_a_body_no_json_decoder_or_store_can_take_is_a_bad_request(
    client: FlaskClient, host_a: Host, path: str, body: bytes, message: str
):
    resp = client.post(path, data=body)
    assert resp.status_code == 400
    error = answer(resp)["Error" if path.startswith("/IpamDriver.") else "Err"]
    assert message in error
    assert host_a.store.list_pools() == [] and host_a.store.list_networks() == []


def test_a_surrogate_pair_is_ordinary_unicode(client: FlaskClient):
    resp = client.post("/NetworkDriver.Leave", data=b'{"NetworkID": "\\ud83d\\ude00"}')
    assert resp.status_code == 400
    assert "not a valid ID: '\U0001f600'" in answer(resp)["Err"]  # refused by validation, not as Unicode


def test_a_huge_field_is_not_echoed_back(client: FlaskClient):
    resp = client.post("/NetworkDriver.CreateNetwork", data=json.dumps({"NetworkID": "a" * (1 << 20)}))
    assert resp.status_code == 400
    assert len(resp.data) < 300
    assert answer(resp)["Err"] == f"field 'NetworkID' is not a valid ID: {'a' * 64!r}… (1048576 characters)"


def test_an_error_message_is_cut_wherever_it_comes_from(
    client: FlaskClient, host_a: Host, monkeypatch: pytest.MonkeyPatch
):
    # requests are bounded where they are parsed; the one error path also cuts what a service raises
    def refuse() -> None:
        raise BadRequest("pool " + "p" * 100_000 + " not found")

    monkeypatch.setattr(host_a.ipam, "default_address_spaces", refuse)
    resp = client.post("/IpamDriver.GetDefaultAddressSpaces", data=b"")
    assert resp.status_code == 400
    error = answer(resp)["Error"]
    assert error.startswith("pool ppp") and error.endswith("… (100015 characters)")
    assert len(error) < 1100
