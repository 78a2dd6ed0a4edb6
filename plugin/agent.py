"""Wiring of one host's agent: store, dataplane, services, the event loop and the Docker-side sync."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from driver import Dataplane, DataplaneError
from driver.neighbour_table import tune_neighbour_table
from driver.service_address import ensure_service_address
from driver.underlay import default_route_address, mtu_for_address
from kvstore import (
    Host,
    HostStore,
    IdentityConflict,
    Store,
    StoreError,
    StoreUnavailable,
    open_kv,
)

from .docker_sync import DockerSync, managed_plugin_id
from .encryption import HostTunnel
from .errors import IdentityRefused
from .event_loop import EventLoop
from .metrics import Metrics
from .nameservice.server import DnsServer
from .nameservice.upstreams import Upstreams
from .services.ipam import IpamService
from .services.network import NetworkService
from .settings import Settings, split_host_port

log = logging.getLogger(__name__)

DNS_PORT = 53  # Docker's `dns` setting takes addresses only
DNS_RETRY = 2.0  # seconds between attempts to listen
CLAIM_RETRY = 1.0  # seconds between registrations while the store has not answered yet
AWAY_PROBE = 0.5  # seconds between registrations while the store is away
KEEPER_INTERVAL = 10.0  # seconds between checks of the spare address blocks
FIRST_HEARTBEAT_WAIT = 15.0  # at most this long a request waits for the first registration's outcome


def load_host_id(state_dir: str) -> str:
    """This host's identity across restarts: a random id kept in the state directory."""
    path = Path(state_dir) / "host-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        host_id = uuid.uuid4().hex[:16]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(host_id + "\n")
        os.replace(tmp, path)
        return host_id


class Agent:
    def __init__(self, settings: Settings, store: Store | None = None, dataplane: Dataplane | None = None):
        self.settings = settings
        self.host_id = load_host_id(settings.state_dir)
        self.vtep = settings.advertise_addr or default_route_address()
        self.underlay_mtu = mtu_for_address(self.vtep)
        self.metrics = Metrics()
        self.store = store or Store(
            self.metrics.timed(
                open_kv(
                    list(settings.etcd_endpoints),
                    settings.state_dir,
                    ca_cert=settings.etcd_ca_cert or None,
                    cert_cert=settings.etcd_cert or None,
                    cert_key=settings.etcd_key or None,
                )
            )
        )
        self.dataplane = dataplane or Dataplane(netns_dir=settings.netns_dir)
        # this host's address blocks, and its journal while the store is away, in STATE_DIR/offline.db
        self.host_store = HostStore(self.store, self.host_id, settings.state_dir)
        # this host's end of encrypted networks: key pair in STATE_DIR, device made when first needed
        self.tunnel = HostTunnel(settings.state_dir, self.host_id, settings.wireguard_port, self.underlay_mtu)
        self.network = NetworkService(
            store=self.store,
            dataplane=self.dataplane,
            host_id=self.host_id,
            vtep=self.vtep,
            underlay_mtu=self.underlay_mtu,
            vxlan_port=settings.vxlan_port,
            embedded=settings.embedded,
            host=self.host_store,
            tunnel=self.tunnel,
        )
        self.ipam = IpamService(
            self.store,
            self.host_id,
            settings.default_pool,
            settings.default_pool_size,
            settings.default_pool6,
            settings.default_pool6_size,
            block_size=settings.block_size,
            block_size6=settings.block_size6,
            host=self.host_store,
        )
        self.loop = EventLoop(
            self.store,
            self.dataplane,
            self.host_id,
            ensure_devices=self.network.ensure_devices,
            resync_interval=settings.resync_interval,
            vxlan_port=settings.vxlan_port,
            on_claims=self.host_store.answer_claims,
            tunnel=self.tunnel,
            metrics=self.metrics,
        )
        self.metrics.watch_cluster(self.store, lambda: self.loop.applied_revision)
        self.docker_sync = DockerSync(
            self.store,
            self.host_id,
            self.dataplane.endpoint_ids_prefixes,
            view=self.loop.view,
            kick=self.loop.kick,
            driver_name=settings.driver_name,
            loose_endpoint_prefixes=self.dataplane.loose_endpoint_ids_prefixes,
            remove_veth=self.dataplane.delete_endpoint,
        )
        self.dns: DnsServer | None = None
        if settings.dns_address:
            upstreams = Upstreams(settings.dns_upstreams, settings.dns_address)
            self.dns = DnsServer(
                settings.dns_address,
                DNS_PORT,
                self.loop.names,
                self.docker_sync.askers,
                upstreams,
                refresh=self.docker_sync.wake,
            )
        self.loop.on_network_event = self.docker_sync.wake
        self.network.on_change = self._network_changed
        self.network.driver_name = self._driver_name
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._host = Host(
            host_id=self.host_id,
            address=self.vtep,
            hostname=socket.gethostname(),
            public_key=self.tunnel.public_key,
            tunnel_port=settings.wireguard_port,
        )
        # The host id is ours once registered; until then, and while another host holds it (a cloned
        # state directory), nothing writes under it: the loops wait and requests are refused.
        self._claimed = False
        self._first_heartbeat = threading.Event()  # set once the first registration ended, either way
        self.refusal: str | None = None
        self.last_heartbeat = 0.0  # unix time of the last registration the store took (pyoverlay status)
        # wakes the heartbeat early: a request found the store away, so probe it every AWAY_PROBE now
        self._beat = threading.Event()
        self.host_store.on_away = self._beat.set

    def rotate_key(self) -> str:
        """A new tunnel key pair (`pyoverlay rotate-key`): on the device at once, published with the host
        record by a heartbeat now; peers take the new public key from their host watch."""
        self._host = dataclasses.replace(self._host, public_key=self.tunnel.rotate())
        self._beat.set()
        return self._host.public_key

    def _driver_name(self) -> str:
        """Our driver name for messages: as Docker sync found it, else the one the docs install with."""
        if self.docker_sync.driver_name:
            return self.docker_sync.driver_name
        return "pyoverlay:latest" if managed_plugin_id() else "pyoverlay"

    def _network_changed(self, network_id: str) -> None:
        self.host_store.wanted.set()  # a network bound here: copy it and get blocks in its pool
        self.loop.kick(network_id)
        self.docker_sync.wake()

    def start(self) -> None:
        """Start the background loops (in the serving process, after any fork)."""
        log.info(
            "agent %s on %s (underlay MTU %d), store %s",
            self.host_id,
            self.vtep,
            self.underlay_mtu,
            "etcd " + ",".join(self.settings.etcd_endpoints) if self.settings.etcd_endpoints else "embedded",
        )
        tune_neighbour_table(self.settings.neigh_table_size)
        self._start_threads((("heartbeat", self._heartbeat),))
        if self.dns is not None:
            self._start_threads((("dns", self._serve_dns),))
        if self.settings.metrics_addr:
            host, port = split_host_port(self.settings.metrics_addr)
            self._start_threads((("metrics", lambda stop: self.metrics.serve(host, port, stop)),))

    def _start_threads(self, loops: tuple[tuple[str, Callable[[threading.Event], None]], ...]) -> None:
        for name, target in loops:
            thread = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve_dns(self, stop: threading.Event) -> None:
        """Listen on the service address (trying again while, say, an agent that is exiting still holds
        the port), then serve. Until then containers still resolve their own host's names."""
        assert self.dns is not None
        failures = 0
        while not stop.is_set():
            try:
                ensure_service_address(self.dns.address)
                self.dns.bind()
            except (DataplaneError, OSError) as exc:
                failures += 1
                level = logging.ERROR if failures == 1 else logging.DEBUG
                log.log(
                    level,
                    "name service on %s:%d not started: %s (trying again)",
                    self.dns.address,
                    DNS_PORT,
                    exc,
                )
                stop.wait(DNS_RETRY)
                continue
            log.info("name service on %s:%d", self.dns.address, self.dns.port)
            self.dns.run(stop)
            return

    def check_identity(self) -> None:
        """Raise IdentityRefused while another host holds this host's id. A request that arrives before
        the first registration ended waits for it (milliseconds; with etcd down, its timeout), so a
        clone never writes first; a store that cannot say lets the request meet the store on its own."""
        self._first_heartbeat.wait(FIRST_HEARTBEAT_WAIT)
        if self.refusal is not None:
            raise IdentityRefused(self.refusal)

    def _register(self) -> None:
        """One heartbeat. The event loop and Docker sync start on the first that succeeds: they write
        under the host id (bindings, endpoints), which a clone must never do to another host's."""
        try:
            self.store.register_host(self._host, ttl=self.settings.host_ttl)
        except IdentityConflict as exc:
            if self.refusal is None:
                log.error("refusing every request: %s", exc)
            self.refusal = str(exc)
            return
        if self.refusal is not None:
            log.warning("host id %s is free again (the other record expired): serving", self.host_id)
            self.refusal = None
        self.last_heartbeat = time.time()
        was_away = self.host_store.away
        published = self.host_store.publish()  # the store answers: what changed here while it was away
        if not self._claimed:
            self._claimed = True
            self.host_store.reload_blocks()
            self._start_threads(
                (
                    ("event-loop", self.loop.run),
                    ("docker-sync", self.docker_sync.run),
                    ("blocks", self._keep_blocks),
                )
            )
        elif was_away or published:
            self.loop.store_back()  # list again now: peers started elsewhere meanwhile
            self.docker_sync.wake()

    def _keep_blocks(self, stop: threading.Event) -> None:
        """Keep copies and a spare address block of each network used here (HostStore.keep), soon after
        a network was bound or an allocation took from the spare."""
        while not stop.is_set():
            self.host_store.wanted.wait(KEEPER_INTERVAL)
            if stop.is_set() or self.host_store.away:
                continue
            try:
                self.host_store.keep()
            except StoreError as exc:
                log.info("address blocks not topped up: %s", exc)

    def _heartbeat(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                self._register()
                failures = 0
            except StoreError as exc:
                if isinstance(exc, StoreUnavailable):
                    self.host_store.mark_away(exc)  # requests stop waiting on the store's timeouts
                failures += 1  # before the first success it retries each second: say it once
                log.log(logging.WARNING if self._claimed or failures == 1 else logging.DEBUG,
                        "cannot register host: %s", exc)  # fmt: skip
            finally:
                self._first_heartbeat.set()
            # Quickly until the store first answers, so the loops start as soon as it does.
            # while away, every AWAY_PROBE: the journal is published soon after the store is back
            quick = not self._claimed or self.host_store.away
            self._beat.wait(AWAY_PROBE if self.host_store.away else CLAIM_RETRY if quick and not self.refusal
                            else self.settings.host_ttl / 3)  # fmt: skip
            self._beat.clear()

    def stop(self) -> None:
        self._stop.set()
        self._beat.set()
        self.host_store.wanted.set()  # wakes the block keeper
        self.docker_sync.wake()  # its loop sleeps on the wake event
        if self.dns is not None:
            self.dns.close()  # wakes its blocked threads
        for thread in self._threads:
            thread.join(timeout=5)
        self.store.close()
