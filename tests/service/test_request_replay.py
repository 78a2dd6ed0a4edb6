"""A request Docker resends after the agent died in the middle of it arrives with an empty body (moby's
plugin client drains its buffer on the first attempt): the restarted agent answers it from the body the
dead one kept, with the answer the first attempt would have had, and takes nothing twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvstore import REQUEST_OWNER_PREFIX
from plugin.app import create_app
from plugin.journal import RequestJournal
from plugin.messages import CreateEndpointRequest, RequestAddressRequest

from .conftest import Host, new_id

ADDRESS = "/IpamDriver.RequestAddress"
CREATE_ENDPOINT = "/NetworkDriver.CreateEndpoint"


def restarted(host: Host, state: Path):
    """The agent after a restart on the same state directory: a new journal, a new app."""
    return create_app(host.network, host.ipam, journal=RequestJournal(state)).test_client()


def post(client, path: str, body: bytes = b"") -> tuple[int, dict]:
    answer = client.post(path, data=body)
    return answer.status_code, json.loads(answer.data)


def test_request_address_resent_empty_gets_the_address_the_dead_agent_reserved(host_a: Host, tmp_path: Path):
    net = host_a.create_network("10.30.0.0/24")
    body = json.dumps({"PoolID": net.pool_id, "Options": {}}).encode()
    # the dead agent: the body kept, the address reserved under the request's key, then SIGKILL
    entry = RequestJournal(tmp_path).begin(ADDRESS, body)
    reserved = host_a.ipam.request_address(RequestAddressRequest.parse(json.loads(body)), entry.key)
    status, answer = post(restarted(host_a, tmp_path), ADDRESS)
    assert (status, answer) == (200, reserved)
    owners = [
        o for o in host_a.store.list_addresses(net.pool_id).values() if o.startswith(REQUEST_OWNER_PREFIX)
    ]
    assert len(owners) == 1  # taken once
    assert list(tmp_path.iterdir()) == []  # answered: nothing kept


def test_create_endpoint_resent_empty_gets_the_same_mac(host_a: Host, tmp_path: Path):
    net = host_a.create_network("10.30.0.0/24")
    endpoint_id = new_id()
    body = {"NetworkID": net.docker_id, "EndpointID": endpoint_id, "Interface": {"Address": "10.30.0.9/24"}}
    raw = json.dumps(body).encode()
    RequestJournal(tmp_path).begin(CREATE_ENDPOINT, raw)
    first = host_a.network.create_endpoint(CreateEndpointRequest.parse(body))
    status, answer = post(restarted(host_a, tmp_path), CREATE_ENDPOINT)
    assert (status, answer) == (200, first)
    assert host_a.store.get_endpoint(endpoint_id).mac == first["Interface"]["MacAddress"]


def test_several_left_on_one_path_are_refused_clearly(host_a: Host, tmp_path: Path):
    net = host_a.create_network("10.30.0.0/24")
    journal = RequestJournal(tmp_path)
    for _ in range(2):
        journal.begin(ADDRESS, json.dumps({"PoolID": net.pool_id, "Options": {}}).encode())
    status, answer = post(restarted(host_a, tmp_path), ADDRESS)
    assert status == 409 and "2 IpamDriver.RequestAddress requests were in flight" in answer["Error"]


@pytest.mark.parametrize("path", [ADDRESS, CREATE_ENDPOINT])
def test_without_a_left_body_an_empty_request_is_refused_as_before(host_a: Host, tmp_path: Path, path: str):
    status, answer = post(restarted(host_a, tmp_path), path)
    assert status == 400 and "missing field" in json.dumps(answer)


def test_left_bodies_older_than_docker_retries_are_dropped(host_a: Host, tmp_path: Path):
    net = host_a.create_network("10.30.0.0/24")
    RequestJournal(tmp_path).begin(ADDRESS, json.dumps({"PoolID": net.pool_id, "Options": {}}).encode())
    client = create_app(
        host_a.network, host_a.ipam, journal=RequestJournal(tmp_path, max_age=-1)
    ).test_client()
    assert list(tmp_path.iterdir()) == []
    assert post(client, ADDRESS)[0] == 400
