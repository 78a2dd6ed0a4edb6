"""DockerSync's decisions against a fake daemon: what it creates, removes, names and collects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import docker.errors
import pytest

import plugin.docker_sync
from kvstore import NotFound, StoreUnavailable

from .conftest import Host, Net, new_id


class FakeNetwork:
    def __init__(self, daemon: FakeDocker, network_id: str, name: str, driver: str, containers=None) -> None:
        self.daemon, self.id, self.name = daemon, network_id, name
        self.attrs: dict[str, Any] = {"Driver": driver, "Containers": containers or {}}
        self.reloads = 0

    def reload(self) -> None:
        self.reloads += 1

    def remove(self) -> None:
        self.daemon.removed.append(self.name)
        self.daemon.items.remove(self)


class FakeNetworks:
    def __init__(self, daemon: FakeDocker) -> None:
        self.daemon = daemon

    def list(self, filters: dict[str, str] | None = None) -> list[FakeNetwork]:
        driver = (filters or {}).get("driver")
        return [n for n in self.daemon.items if driver is None or n.attrs["Driver"] == driver]

    def create(self, name: str, driver: str, options=None, ipam=None, enable_ipv6=False) -> FakeNetwork:
        made = {"name": name, "driver": driver, "options": options, "ipam": dict(ipam)}
        self.daemon.created.append({**made, "enable_ipv6": True} if enable_ipv6 else made)
        network = FakeNetwork(self.daemon, new_id(), name, driver)
        self.daemon.items.append(network)
        if self.daemon.on_create is not None:
            self.daemon.on_create(network, ipam["Config"][0])  # the daemon calls our plugin
        return network


class FakeApi:
    """The low-level calls: the container list as GET /containers/json answers it, made from the
    networks' Containers, and docker_gwbridge."""

    def __init__(self, daemon: FakeDocker) -> None:
        self.daemon = daemon
        self.gateway_bridge: dict[str, Any] | None = None
        self.inspected: list[str] = []

    def containers(self, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002 - the SDK's name
        summaries: dict[str, dict[str, Any]] = {}
        for network in self.daemon.items:
            for container_id, info in network.attrs["Containers"].items():
                summary = summaries.setdefault(
                    container_id,
                    {"Id": container_id, "Names": ["/" + info["Name"]], "NetworkSettings": {"Networks": {}}},
                )
                summary["NetworkSettings"]["Networks"][network.name] = {
                    "NetworkID": network.id,
                    "EndpointID": info["EndpointID"],
                    "IPAddress": info.get("IPv4Address", "").split("/")[0],
                    "Aliases": None,  # as Docker lists them: only inspect has them
                }
        return list(summaries.values())

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        self.inspected.append(container_id)
        [summary] = [c for c in self.containers() if c["Id"] == container_id]
        networks = summary["NetworkSettings"]["Networks"]
        for network in self.daemon.items:
            if network.name in networks:
                networks[network.name]["Aliases"] = network.attrs["Containers"][container_id].get("Aliases")
        return {"Name": summary["Names"][0], "NetworkSettings": {"Networks": networks}}

    def inspect_network(self, name: str) -> dict[str, Any]:
        if name != "docker_gwbridge" or self.gateway_bridge is None:
            raise docker.errors.NotFound(name)
        return self.gateway_bridge


class FakeDocker:
    """Only what DockerSync.sync_once uses of a docker SDK client."""

    def __init__(self) -> None:
        self.api = FakeApi(self)
        self.items: list[FakeNetwork] = []
        self.created: list[dict[str, Any]] = []
        self.removed: list[str] = []
        self.networks = FakeNetworks(self)
        self.on_create: Callable[[FakeNetwork, dict[str, Any]], None] | None = None

    def add(self, net: Net, name: str, containers: dict[str, dict[str, str]] | None = None) -> FakeNetwork:
        network = FakeNetwork(self, net.docker_id, name, "pyoverlay", containers)
        self.items.append(network)
        return network


def daemon_of(host: Host) -> FakeDocker:
    host.sync._client = FakeDocker()
    return host.sync._client


def listed(host: Host) -> Host:
    host.loop.relist()
    host.settle()
    return host


def test_a_network_made_on_another_host_is_created_here(host_a: Host, host_b: Host):
    theirs = host_b.create_network("10.30.0.0/24", ip_range="10.30.0.128/25")
    daemon_b, daemon_a = daemon_of(host_b), daemon_of(host_a)
    daemon_b.add(theirs, "web")
    listed(host_a).sync.sync_once()
    assert daemon_a.created == []  # its name is not known yet
    listed(host_b).sync.sync_once()
    assert host_b.cluster(theirs).name == "web"
    host_a.drain(lambda: host_a.loop.view().networks[theirs.docker_id].name == "web")
    daemon_a.on_create = lambda net, config: host_a.create_network(
        config["Subnet"], docker_id=net.id, ip_range=config["IPRange"], gateway=config["Gateway"]
    )
    host_a.sync.sync_once()
    gateway = host_b.cluster(theirs).gateway
    config = {
        "Subnet": "10.30.0.0/24",
        "IPRange": "10.30.0.128/25",
        "Gateway": gateway,
        "AuxiliaryAddresses": None,
    }
    assert daemon_a.created == [
        {
            "name": "web",
            "driver": "pyoverlay",
            "options": None,
            "ipam": {"Driver": "pyoverlay", "Config": [config]},
        }
    ]
    [local] = daemon_a.items
    assert host_a.store.bindings("host-a") == {local.id: theirs.docker_id}
    host_a.settle()
    host_a.sync.sync_once()
    assert len(daemon_a.created) == 1 and daemon_a.removed == []


def test_a_network_this_host_left_is_not_created_again(host_a: Host, host_b: Host):
    theirs = host_b.create_network("10.30.0.0/24")
    host_b.create_endpoint(theirs)
    mine = host_a.create_network("10.30.0.0/24")
    host_a.network.delete_network(mine.docker_id)  # B still uses it: A leaves
    host_b.store.set_network_name(theirs.docker_id, "web")
    daemon_a = daemon_of(listed(host_a))
    assert host_a.loop.view().networks[theirs.docker_id].name == "web"
    assert host_a.store.left_networks("host-a") == {theirs.docker_id}
    host_a.sync.sync_once()
    assert daemon_a.created == []


def test_a_bound_network_removed_elsewhere_is_removed_from_this_daemon(host_a: Host, host_b: Host):
    theirs = host_b.create_network("10.30.0.0/24")
    mine = host_a.create_network("10.30.0.0/24")
    daemon_a = daemon_of(listed(host_a))
    daemon_a.add(mine, "web")
    host_a.sync.sync_once()
    assert daemon_a.removed == []
    host_b.network.delete_network(theirs.docker_id)
    host_a.drain(lambda: theirs.docker_id not in host_a.loop.view().networks)
    host_a.sync.sync_once()
    assert daemon_a.removed == ["web"] and daemon_a.items == []


def test_network_and_container_names_are_learned(host_a: Host):
    mine = host_a.create_network("10.30.0.0/24")
    endpoint_id, _, _ = host_a.create_endpoint(mine)
    daemon_a = daemon_of(listed(host_a))
    info = {"EndpointID": endpoint_id, "Name": "db", "Aliases": ["sql", "c0ffee"]}
    daemon_a.add(mine, "web", {"c0ffee": info})
    host_a.sync.sync_once()
    assert host_a.cluster(mine).name == "web"
    endpoint = host_a.store.get_endpoint(endpoint_id)
    assert (endpoint.container_name, endpoint.aliases) == ("db", ("sql", "c0ffee"))
    info.update(Name="db2")  # docker rename
    host_a.sync.sync_once()
    endpoint = host_a.store.get_endpoint(endpoint_id)
    assert (endpoint.container_name, endpoint.aliases) == ("db2", ("sql", "c0ffee"))
    assert daemon_a.api.inspected == ["c0ffee"]  # once per endpoint: aliases change only by reconnecting


def test_the_name_service_learns_which_networks_each_container_asks_from(host_a: Host):
    mine, other = host_a.create_network("10.30.0.0/24"), host_a.create_network("10.31.0.0/24")
    first, second = host_a.create_endpoint(mine), host_a.create_endpoint(other)
    daemon_a = daemon_of(listed(host_a))
    both = {"EndpointID": first[0], "Name": "both", "IPv4Address": first[1]}
    daemon_a.add(mine, "web", {"c1": both})
    daemon_a.add(other, "db", {"c1": {**both, "EndpointID": second[0], "IPv4Address": second[1]}})
    daemon_a.add(Net("b0", "", "", ""), "bridge", {"c2": {"EndpointID": "x", "Name": "plain"}})
    daemon_a.items[-1].attrs["Driver"] = "bridge"
    daemon_a.items[-1].attrs["Containers"]["c2"]["IPv4Address"] = "172.17.0.2/16"
    daemon_a.api.gateway_bridge = {"Containers": {"c1": {"IPv4Address": "172.18.0.2/16"}}}
    host_a.sync.sync_once()
    askers = host_a.sync.askers
    assert askers.networks("172.18.0.2") == {mine.docker_id, other.docker_id}  # its default route's
    assert askers.networks(first[1].split("/")[0]) == {mine.docker_id, other.docker_id}
    assert askers.networks("172.17.0.2") == frozenset()  # a container here, on no pyoverlay network
    assert askers.networks("172.18.0.9") is None  # unknown: the name service asks for a pass


def test_own_endpoints_without_veth_or_container_are_collected_after_a_grace_period(
    host_a: Host, monkeypatch
):
    mine = host_a.create_network("10.30.0.0/24")
    kept, gone, in_container = (host_a.create_endpoint(mine) for _ in range(3))
    host_a.dp.plug(kept[0])  # in a container this daemon does not list
    for endpoint_id, _, _ in (gone, in_container):
        del host_a.dp.endpoints[endpoint_id]  # the veth went (a reboot)
    daemon_a = daemon_of(listed(host_a))
    daemon_a.add(mine, "web", {"c0ffee": {"EndpointID": in_container[0], "Name": "db"}})
    host_a.sync.sync_once()
    assert len(host_a.store.list_endpoints()) == 3  # within the grace period
    monkeypatch.setattr(plugin.docker_sync, "STALE_SECONDS", 0.0)
    host_a.sync.sync_once()
    assert {e.endpoint_id for e in host_a.store.list_endpoints()} == {kept[0], in_container[0]}
    with pytest.raises(NotFound):
        host_a.store.get_endpoint(gone[0])
    addresses = host_a.store.list_addresses(mine.pool_id)
    assert gone[1].split("/")[0] not in addresses
    assert {addresses[a.split("/")[0]] for _, a, _ in (kept, in_container)} == {kept[2], in_container[2]}
    assert addresses["10.30.0.1"] == "gateway"


def test_own_endpoints_whose_veth_is_in_no_container_are_collected_with_it(host_a: Host, monkeypatch):
    # Docker went on after a DeleteEndpoint that met an agent restart and came back without its body:
    # the record, the address and the veth stay, its container side back in the host's namespace
    mine = host_a.create_network("10.30.0.0/24")
    left, joined, just_made = (host_a.create_endpoint(mine) for _ in range(3))
    for endpoint_id in (left[0], joined[0]):
        host_a.dp.plug(endpoint_id)  # Docker moved both into their containers at Join
    host_a.dp.plugged.discard(left[0])  # and moved left's back when its sandbox went
    daemon_a = daemon_of(listed(host_a))
    daemon_a.add(mine, "web", {"c0ffee": {"EndpointID": joined[0], "Name": "db"}})
    host_a.sync.sync_once()
    assert len(host_a.store.list_endpoints()) == 3  # within the grace period: just_made awaits its Join
    monkeypatch.setattr(plugin.docker_sync, "STALE_SECONDS", 0.0)
    host_a.dp.plug(just_made[0])  # its Join came
    daemon_a.add(mine, "app", {"beef": {"EndpointID": just_made[0], "Name": "app"}})
    host_a.sync.sync_once()
    assert {e.endpoint_id for e in host_a.store.list_endpoints()} == {joined[0], just_made[0]}
    assert set(host_a.dp.endpoints) == {joined[0], just_made[0]}
    assert left[1].split("/")[0] not in host_a.store.list_addresses(mine.pool_id)


def test_a_veth_in_a_container_is_never_collected(host_a: Host, monkeypatch):
    mine = host_a.create_network("10.30.0.0/24")
    endpoint_id = host_a.create_endpoint(mine)[0]
    host_a.dp.plug(endpoint_id)  # in a container this daemon does not list (yet): never taken
    monkeypatch.setattr(plugin.docker_sync, "STALE_SECONDS", 0.0)
    daemon_of(listed(host_a)).add(mine, "web", {})
    host_a.sync.sync_once()
    host_a.sync.sync_once()
    assert [e.endpoint_id for e in host_a.store.list_endpoints()] == [endpoint_id]
    assert endpoint_id in host_a.dp.endpoints


def test_a_binding_this_daemon_lost_is_dropped_after_a_grace_period(host_a: Host, monkeypatch):
    mine = host_a.create_network("10.30.0.0/24")
    daemon_of(listed(host_a))  # the network's DeleteNetwork failed: the daemon removed it anyway
    host_a.sync.sync_once()
    assert host_a.store.bindings("host-a") == {mine.docker_id: mine.docker_id}
    monkeypatch.setattr(plugin.docker_sync, "STALE_SECONDS", 0.0)
    host_a.sync.sync_once()
    assert host_a.store.bindings("host-a") == {} and host_a.store.list_networks() == []
    host_a.drain(lambda: host_a.dp.networks == {})


def test_the_name_service_learns_askers_while_the_store_is_away(host_a: Host, monkeypatch):
    mine = host_a.create_network("10.30.0.0/24")
    first = host_a.create_endpoint(mine)
    daemon_a = daemon_of(listed(host_a))
    daemon_a.add(mine, "web", {"c1": {"EndpointID": first[0], "Name": "box", "IPv4Address": first[1]}})
    daemon_a.api.gateway_bridge = {"Containers": {"c1": {"IPv4Address": "172.18.0.2/16"}}}

    def away(*_: object) -> None:
        raise StoreUnavailable("etcd is away")

    monkeypatch.setattr(host_a.store, "bindings", away)
    monkeypatch.setattr(host_a.store, "set_endpoint_name", away)
    with pytest.raises(StoreUnavailable):
        host_a.sync.sync_once()
    assert host_a.sync.askers.networks("172.18.0.2") == {mine.docker_id}


def test_a_pass_lists_links_only_for_own_endpoints_in_no_container(host_a: Host, monkeypatch):
    mine = host_a.create_network("10.30.0.0/24")
    attached, alone = host_a.create_endpoint(mine), host_a.create_endpoint(mine)
    daemon_a = daemon_of(listed(host_a))
    daemon_a.add(mine, "web", {"c1": {"EndpointID": attached[0], "Name": "box"}})
    listings: list[set[str]] = []
    prefixes = host_a.sync.local_endpoint_prefixes
    monkeypatch.setattr(
        host_a.sync, "local_endpoint_prefixes", lambda: listings.append(prefixes()) or listings[-1]
    )
    host_a.sync.sync_once()
    assert listings == [{attached[0][:12], alone[0][:12]}]  # alone is in no container: is its veth there?
    host_a.delete_endpoint(mine, alone[0])
    listed(host_a).sync.sync_once()
    assert len(listings) == 1  # every own endpoint is in a container: the links are not listed
