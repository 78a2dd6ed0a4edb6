"""Hosts for the service tier: a store, a MemoryDataplane, the services, the event loop and Docker sync,
wired as plugin/agent.py wires them, several hosts sharing one in-memory key-value primitive. No root,
no dockerd, no etcd. The event loop is driven by hand (drain/settle) rather than by its thread."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kvstore import HostStore, Network, Store
from kvstore.kv_sqlite import SqliteKV
from plugin.docker_sync import DockerSync
from plugin.event_loop import EventLoop
from plugin.messages import (
    CreateEndpointRequest,
    CreateNetworkRequest,
    EndpointRequest,
    RequestAddressRequest,
    RequestPoolRequest,
)
from plugin.services.ipam import IpamService
from plugin.services.network import NetworkService
from tests.memory_dataplane import MemoryDataplane

UNDERLAY_MTU = 1500
VXLAN_PORT = 4789
DEFAULT_POOL = "10.200.0.0/13"
BLOCK_SIZE = 28  # as the agent's default: service tests run with address blocks
MAC_OPTION = "com.docker.network.endpoint.macaddress"
GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}


def new_id() -> str:
    """A Docker-style 64-hex id."""
    return uuid.uuid4().hex + uuid.uuid4().hex


def new_mac() -> str:
    return ":".join(f"{b:02x}" for b in (2, *uuid.uuid4().bytes[:5]))


def network_body(docker_id: str, pool: str, gateway: str | None, space: str = "pyoverlay") -> dict[str, Any]:
    """A CreateNetwork body as dockerd sends it."""
    return {
        "NetworkID": docker_id,
        "Options": {"com.docker.network.generic": {}, "com.docker.network.enable_ipv6": False},
        "IPv4Data": [{"AddressSpace": space, "Pool": pool, "Gateway": gateway or ""}],
        "IPv6Data": [],
    }


@dataclass(frozen=True)
class Net:
    """A network as one host's daemon knows it."""

    docker_id: str  # this host's Docker NetworkID
    pool_id: str
    subnet: str
    gateway: str  # CIDR, as the IPAM answered it


@dataclass
class Host:
    host_id: str
    vtep: str
    store: Store
    dp: MemoryDataplane
    network: NetworkService
    ipam: IpamService
    loop: EventLoop
    sync: DockerSync
    kicks: list[str] = field(default_factory=list)  # network ids passed to NetworkService.on_change

    # -- Docker's call sequences ----------------------------------------------------------------
    def create_network(
        self,
        subnet: str | None = "10.30.0.0/24",
        docker_id: str | None = None,
        ip_range: str | None = None,
        gateway: str | None = None,
    ) -> Net:
        """`docker network create -d pyoverlay --ipam-driver pyoverlay --subnet … [--ip-range …]
        [--gateway …]`, as dockerd calls it: pool, gateway address, then the network."""
        docker_id = docker_id or new_id()
        body = {"AddressSpace": "pyoverlay", "Pool": subnet or "", "SubPool": ip_range or "", "V6": False}
        pool = self.ipam.request_pool(RequestPoolRequest.parse(body))
        body = {"PoolID": pool["PoolID"], "Options": GATEWAY, "Address": gateway or ""}
        gateway = self.ipam.request_address(RequestAddressRequest.parse(body))["Address"]
        body = network_body(docker_id, pool["Pool"], gateway)
        self.network.create_network(CreateNetworkRequest.parse(body))
        return Net(docker_id, pool["PoolID"], pool["Pool"], gateway)

    def create_endpoint(
        self, net: Net, mac: str | None = None, address: str | None = None
    ) -> tuple[str, str, str]:
        """RequestAddress (no MAC: the IPAM does not ask for one), then CreateEndpoint with the MAC only if
        the user set one (--mac-address): (endpoint id, address CIDR, mac)."""
        endpoint_id = new_id()
        body = {"PoolID": net.pool_id, "Options": {}, **({"Address": address} if address else {})}
        cidr = self.ipam.request_address(RequestAddressRequest.parse(body))["Address"]
        body = {
            "NetworkID": net.docker_id,
            "EndpointID": endpoint_id,
            "Interface": {"Address": cidr, "MacAddress": mac or ""},
        }
        answer = self.network.create_endpoint(CreateEndpointRequest.parse(body))
        return endpoint_id, cidr, mac or answer["Interface"]["MacAddress"]

    def delete_endpoint(self, net: Net, endpoint_id: str) -> None:
        self.network.delete_endpoint(
            EndpointRequest.parse({"NetworkID": net.docker_id, "EndpointID": endpoint_id})
        )

    def cluster(self, net: Net) -> Network:
        return self.store.network_for(self.host_id, net.docker_id)

    # -- the event loop, driven by hand ---------------------------------------------------------
    def drain(self, until: Callable[[], bool], timeout: float = 5.0) -> None:
        """Handle queued items until ``until()`` holds; fail if it does not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not until():
            remaining = deadline - time.monotonic()
            try:
                item = self.loop.queue.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise AssertionError(f"host {self.host_id}: condition not met within {timeout}s") from None
            self.loop.handle(*item)

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Run this host's event loop in a thread meanwhile: it answers other hosts' claims on addresses
        of its blocks (a --ip there), as a running agent does."""
        stop = threading.Event()
        self.loop.relist()

        def run() -> None:
            while not stop.is_set():
                with contextlib.suppress(queue.Empty):
                    self.loop.handle(*self.loop.queue.get(timeout=0.05))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def settle(self, quiet: float = 0.3) -> list[tuple[str, Any, Any]]:
        """Handle queued items until none arrives for ``quiet`` seconds; return what was handled."""
        handled = []
        while True:
            try:
                item = self.loop.queue.get(timeout=quiet)
            except queue.Empty:
                return handled
            handled.append(item)
            self.loop.handle(*item)


@pytest.fixture
def kv() -> Iterator[SqliteKV]:
    """One in-memory primitive shared by every host of a test, as hosts share one etcd."""
    primitive = SqliteKV(None)
    yield primitive
    primitive.close()


@pytest.fixture
def make_host(kv: SqliteKV) -> Iterator[Callable[..., Host]]:
    """make_host(host_id, vtep, embedded=False): a host wired as plugin/agent.py wires one."""
    hosts: list[Host] = []

    def factory(host_id: str, vtep: str, embedded: bool = False) -> Host:
        store = Store(kv)  # not closed by the host: the primitive is closed once, by the kv fixture
        dp = MemoryDataplane()
        host_store = HostStore(store, host_id, None)
        network = NetworkService(
            store=store,
            dataplane=dp,
            host_id=host_id,
            vtep=vtep,
            underlay_mtu=UNDERLAY_MTU,
            vxlan_port=VXLAN_PORT,
            embedded=embedded,
            host=host_store,
        )
        ipam = IpamService(store, host_id, DEFAULT_POOL, 24, block_size=BLOCK_SIZE, host=host_store)

        def ensure_devices(net: Network) -> None:
            dp.ensure_network(net.vni, network.mtu_for(net), vtep, VXLAN_PORT)

        loop = EventLoop(
            store,
            dp,
            host_id,
            ensure_devices=ensure_devices,
            resync_interval=3600,
            vxlan_port=VXLAN_PORT,
            on_claims=host_store.answer_claims,
        )
        sync = DockerSync(
            store,
            host_id,
            dp.endpoint_ids_prefixes,
            view=loop.view,
            kick=loop.kick,
            driver_name="pyoverlay",
            loose_endpoint_prefixes=dp.loose_endpoint_ids_prefixes,
            remove_veth=dp.delete_endpoint,
        )
        loop.on_network_event = sync.wake
        host = Host(host_id, vtep, store, dp, network, ipam, loop, sync)

        def changed(network_id: str) -> None:
            host.kicks.append(network_id)
            loop.kick(network_id)
            sync.wake()

        network.on_change = changed
        hosts.append(host)
        return host

    yield factory
    for host in hosts:
        host.loop.close()  # cancels the watches before the primitive goes


@pytest.fixture
def host_a(make_host: Callable[..., Host]) -> Host:
    return make_host("host-a", "192.0.2.1")


@pytest.fixture
def host_b(make_host: Callable[..., Host]) -> Host:
    return make_host("host-b", "192.0.2.2")
