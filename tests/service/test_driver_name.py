"""Errors that give a command name the driver as this host's daemon knows it: with the managed plugin
that is its full name with the tag (docs/install.md, "The driver name"), never a bare `pyoverlay`."""

from __future__ import annotations

import pytest

from plugin.errors import BadRequest
from plugin.messages import CreateNetworkRequest

from .conftest import Host, network_body


@pytest.mark.parametrize("driver", ["pyoverlay", "pyoverlay:latest", "registry.example.com/pyoverlay:0.2.0"])
def test_the_default_ipam_refusal_names_this_hosts_driver(host_a: Host, driver: str) -> None:
    host_a.network.driver_name = lambda: driver
    body = network_body("n1", "172.29.0.0/16", "172.29.0.1/16", space="LocalDefault")
    with pytest.raises(BadRequest) as refused:
        host_a.network.create_network(CreateNetworkRequest.parse(body))
    assert f"use: docker network create -d {driver} --ipam-driver {driver} [--subnet CIDR] NAME" in str(
        refused.value
    )
