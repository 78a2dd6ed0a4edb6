"""The one event loop of a host: the only writer of FDB and neighbour entries for remote endpoints.

Everything it reacts to enters one queue: the store's watches, handler kicks, Docker sync's findings and
a periodic resync timer. It watches only what this host needs, each scope listed at revision R and
watched from R + 1: the network list, this host's bindings, and the endpoints of each network bound
here (joining a network starts that scope, leaving it stops it). A watch lives until it fails; then
only its scope is listed again. What to program is computed by driver.peers' pure functions.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from driver import Dataplane
from kvstore import Endpoint, Event, Host, Network, NotFound, Store, StoreError

from .encryption import HostTunnel
from .endpoint_rules import _announces, _programs_kernel
from .event_kernel import KernelSide
from .guards import VtepGuard
from .metrics import Metrics
from .nameservice.index import NameIndex

log = logging.getLogger(__name__)

NETWORKS, BINDINGS, HOSTS, CLAIMS = "networks", "bindings", "hosts", "claims"
ENDPOINTS = "endpoints/"  # + network id
RETRY_MIN, RETRY_MAX = 0.5, 10.0
TUNNEL_CHECK = 5.0  # seconds between looks at the encrypted networks' tunnel (a wireguard-go that died)


@dataclass(frozen=True)
class View:
    """What the loop knows, copied for other threads: Docker sync reads this host's endpoints from it
    (networks and bindings it reads from the store, in one consistent read)."""

    networks: dict[str, Network] = field(default_factory=dict)  # network_id -> Network, every network
    bindings: dict[str, str] = field(default_factory=dict)  # docker_network_id -> network_id, this host
    endpoints: dict[str, Endpoint] = field(default_factory=dict)  # endpoint_id -> this host's endpoints


class EventLoop(KernelSide):
    def __init__(
        self,
        store: Store,
        dataplane: Dataplane,
        host_id: str,
        ensure_devices: Callable[[Network], None],
        on_network_event: Callable[[str, Network | None], None] = lambda network_id, network: None,
        resync_interval: float = 30.0,
        vxlan_port: int = 4789,
        on_claims: Callable[[list[tuple[str, dict, int]]], None] = lambda claims: None,
        tunnel: HostTunnel | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.dataplane = dataplane
        self.host_id = host_id
        self.ensure_devices = ensure_devices  # builds bridge + VXLAN of a network bound here
        self.on_network_event = on_network_event  # the Docker side follows networks made or removed elsewhere
        self.resync_interval = resync_interval
        self.on_claims = on_claims  # other hosts asking for addresses of this host's blocks
        self.hosts: dict[str, Host] = {}  # host_id -> its record, every registered host
        self.tunnel = tunnel  # this host's end of encrypted networks (plugin/encryption.py)
        self.vtep_guard = VtepGuard(dataplane, vxlan_port)
        self.networks: dict[str, Network] = {}
        self.bindings: dict[str, str] = {}  # docker_network_id -> network_id
        self.endpoints: dict[str, dict[str, Endpoint]] = {}  # network_id -> endpoints, bound networks only
        self.queue: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        self._watches: dict[str, tuple[int, Any]] = {}  # scope -> (generation, Watch)
        self._generations = itertools.count(1)
        self._broken: set[str] = set()  # scopes to list again
        self._retry_at, self._retry_delay = 0.0, RETRY_MIN
        self._view_lock = threading.Lock()
        self.names = NameIndex()  # the name service's view of the networks bound here
        self._host_addresses: dict[str, tuple[str, str] | None] = {}  # network_id -> as last ensured
        self.metrics = metrics or Metrics()
        self._applied_revision = 0

    @property
    def applied_revision(self) -> int:
        """The highest store revision the loop listed a scope at or applied a change of (the store's
        revision minus this is the loop's lag; see pyoverlay_event_loop_lag_revisions)."""
        return self._applied_revision

    def _applied(self, revision: int) -> None:
        self._applied_revision = max(self._applied_revision, revision)

    # -- inputs, from any thread --------------------------------------------------------------------
    def kick(self, network_id: str = "") -> None:
        """A handler or Docker sync changed a network on this host: check its devices and peers."""
        self.queue.put(("kick", network_id, None))

    def store_back(self) -> None:
        """The store answers again: list what broke now rather than after the back-off."""
        self.queue.put(("back", None, None))

    def view(self) -> View:
        with self._view_lock:
            own = {
                e.endpoint_id: e
                for endpoints in self.endpoints.values()
                for e in endpoints.values()
                if e.host_id == self.host_id
            }
            return View(dict(self.networks), dict(self.bindings), own)

    # -- the loop -----------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.relist()
        next_resync = time.monotonic() + self.resync_interval
        next_tunnel_check = time.monotonic() + TUNNEL_CHECK
        while not stop.is_set():
            now = time.monotonic()
            wake = min(next_resync, self._retry_at if self._broken else next_resync)
            try:
                item = self.queue.get(timeout=max(0.0, min(wake - now, 1.0)))
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self.handle(*item)
                elif self._broken and time.monotonic() >= self._retry_at:
                    self.repair()
                if time.monotonic() >= next_resync:
                    self.handle("resync", None, None)
                    next_resync = time.monotonic() + self.resync_interval
                if self.tunnel is not None and time.monotonic() >= next_tunnel_check:
                    next_tunnel_check = time.monotonic() + TUNNEL_CHECK
                    self.tunnel.supervise()
            except Exception:  # one bad item never stops the loop
                log.exception("event loop: %s failed", item[0] if item else "repair")
        self.close()

    def relist(self) -> None:
        """List every scope this host needs, program the kernel, and start the watches."""
        self._broken = {NETWORKS, BINDINGS, HOSTS, CLAIMS}
        self.repair()
        self.collect_devices()
        self.collect_retired_veths()

    def repair(self) -> None:
        """List the broken scopes again (listing the bindings may add endpoint scopes) and restart their
        watches; on a store failure, try again later."""
        while self._broken:
            scope = min(self._broken, key=lambda s: (s != NETWORKS, s != BINDINGS, s))
            try:
                revision = self._list(scope)
            except StoreError as exc:
                log.warning(
                    "store unavailable (%s); listing %s again in %.1fs", exc, scope, self._retry_delay
                )
                self._retry_at = time.monotonic() + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
                return
            self._broken.discard(scope)
            self._applied(revision)
        self._retry_delay = RETRY_MIN
        self.follow_tunnel()  # the view is whole again

    def handle(self, kind: str, scope: Any, payload: Any) -> None:
        if kind == "kick":
            self.collect_devices()
            if scope in self.endpoints:
                self.sync(scope, ensure=True)
        elif kind == "resync":  # drift in the kernel (an entry deleted by hand) is repaired here
            for network_id in list(self.endpoints):
                self.sync(network_id, ensure=True)
            self.collect_devices()
            self.collect_retired_veths()
            self.guard_vteps(force=True)
            self.follow_tunnel(force=True)
        elif kind == "back":
            self._retry_at, self._retry_delay = 0.0, RETRY_MIN
        elif kind == "watch":
            generation, batch = payload
            current = self._watches.get(scope)
            if current is None or current[0] != generation:
                return  # from a watch cancelled since
            if isinstance(batch, Exception):
                log.info("watch of %s ended (%s); listing it again", scope, batch)
                self.metrics.watch_restarted(scope)
                self._watches.pop(scope, None)
                self._broken.add(scope)
                self._retry_at = 0.0
            else:
                self._apply(scope, batch)
                self._applied(max((event.revision for event in batch), default=0))
        if self._broken and time.monotonic() >= self._retry_at:
            self.repair()

    def close(self) -> None:
        for scope in list(self._watches):
            self._stop_watch(scope)

    # -- scopes -------------------------------------------------------------------------------------
    def _list(self, scope: str) -> int:
        """List ``scope``, start its watch and act on what it holds; the revision it was read at."""
        revision = 0  # an endpoint scope of a network no longer bound is not read
        if scope == NETWORKS:
            networks, revision = self.store.networks_at()
            with self._view_lock:
                gone = set(self.networks) - {n.network_id for n in networks}  # deleted while unwatched
                self.networks = {n.network_id: n for n in networks}
            self._watch(scope, lambda sink: self.store.watch_networks(revision + 1, sink))
            for network in networks:
                self.on_network_event(network.network_id, network)
            for network_id in gone:
                self.on_network_event(network_id, None)
                if network_id in self.endpoints:
                    self._leave(network_id)
        elif scope == BINDINGS:
            bindings, revision = self.store.bindings_at(self.host_id)
            with self._view_lock:
                self.bindings = bindings
            self._watch(scope, lambda sink: self.store.watch_bindings(self.host_id, revision + 1, sink))
            self._follow_bindings()
        elif scope == HOSTS:
            hosts, revision = self.store.hosts_at()
            self.hosts = {h.host_id: h for h in hosts}
            self._watch(scope, lambda sink: self.store.watch_hosts(revision + 1, sink))
            self.guard_vteps()
            self.follow_tunnel()
        elif scope == CLAIMS:
            claims, revision = self.store.claims_at()
            self._watch(scope, lambda sink: self.store.watch_claims(revision + 1, sink))
            self.on_claims(claims)
        elif scope[len(ENDPOINTS) :] in self.endpoints:  # still bound
            network_id = scope[len(ENDPOINTS) :]
            endpoints, revision = self.store.endpoints_at(network_id)
            with self._view_lock:
                self.endpoints[network_id] = {e.endpoint_id: e for e in endpoints}
            self._index_names(network_id)
            self._watch(scope, lambda sink: self.store.watch_endpoints(network_id, revision + 1, sink))
            self.sync(network_id, ensure=True)
            self.guard_vteps()
        return revision

    def _watch(self, scope: str, start: Callable[[Callable[[Any], None]], Any]) -> None:
        self._stop_watch(scope)
        generation = next(self._generations)
        watch = start(lambda batch: self.queue.put(("watch", scope, (generation, batch))))
        self._watches[scope] = (generation, watch)

    def _stop_watch(self, scope: str) -> None:
        _, watch = self._watches.pop(scope, (0, None))
        if watch is not None:
            watch.cancel()

    def _follow_bindings(self) -> None:
        """Start the endpoint scope of every network bound here, stop those of networks left."""
        bound = set(self.bindings.values())
        for network_id in sorted(bound - set(self.endpoints)):
            if network_id not in self.networks:  # the binding's event came before the network's
                try:
                    network = self.store.get_network(network_id)
                except NotFound:
                    continue  # deleted on another host: this host's own delete_network drops the binding
                with self._view_lock:
                    self.networks[network_id] = network
            with self._view_lock:
                self.endpoints[network_id] = {}
            self._broken.add(ENDPOINTS + network_id)
        for network_id in set(self.endpoints) - bound:
            self._leave(network_id)

    def _leave(self, network_id: str) -> None:
        self._stop_watch(ENDPOINTS + network_id)
        self._broken.discard(ENDPOINTS + network_id)
        with self._view_lock:
            self.endpoints.pop(network_id, None)
        self.names.drop(network_id)
        self._host_addresses.pop(network_id, None)  # goes with the bridge
        self.metrics.network_left(network_id)
        self.collect_devices()
        self.guard_vteps()
        self.follow_tunnel()  # the last encrypted network here takes the tunnel device with it

    def _apply(self, scope: str, events: list[Event]) -> None:
        if scope == CLAIMS:
            self.on_claims([(e.key_id, e.record, e.revision) for e in events if isinstance(e.record, dict)])
            return
        if scope == HOSTS:
            before = dict(self.hosts)
            for event in events:
                if isinstance(event.record, Host):
                    self.hosts[event.key_id] = event.record
                else:
                    self.hosts.pop(event.key_id, None)
            if self.hosts != before:  # not a heartbeat's refresh of the same record
                self.guard_vteps()
                self.follow_tunnel()  # a member's key or address changed, or it was forgotten
            return
        announce: dict[str, Endpoint] = {}  # remote endpoints that appeared or changed IP or MAC
        programmed = False  # whether an event touches what sync programs (remote peers, an exposure)
        with self._view_lock:
            for event in events:
                if scope == NETWORKS:
                    if isinstance(event.record, Network):
                        self.networks[event.key_id] = event.record
                    else:
                        self.networks.pop(event.key_id, None)
                elif scope == BINDINGS:
                    if isinstance(event.record, str):
                        self.bindings[event.key_id] = event.record
                    else:
                        self.bindings.pop(event.key_id, None)
                else:
                    endpoints = self.endpoints.get(scope[len(ENDPOINTS) :])
                    if endpoints is None:
                        continue
                    before = endpoints.get(event.key_id)
                    after = event.record if isinstance(event.record, Endpoint) else None
                    programmed = programmed or _programs_kernel(self.host_id, before, after)
                    if after is not None:
                        if _announces(self.host_id, before, after):
                            announce[event.key_id] = after
                        endpoints[event.key_id] = after
                    else:
                        endpoints.pop(event.key_id, None)
        if scope == NETWORKS:
            for event in events:
                self.on_network_event(event.key_id, self.networks.get(event.key_id))
                if event.action == "delete" and event.key_id in self.endpoints:
                    self._leave(event.key_id)  # removed on another host: its devices go
                elif event.key_id in self.endpoints:
                    self._index_names(event.key_id)  # its name may have been learned
        elif scope == BINDINGS:
            self._follow_bindings()
        else:
            network_id = scope[len(ENDPOINTS) :]
            self._index_names(network_id)
            if programmed:  # this host's own containers' endpoints are veths: nothing for sync to do
                self.sync(network_id)  # at once: convergence time is what users feel
                self.guard_vteps()
            elif (network := self.networks.get(network_id)) is not None and network.encrypted:
                # this host's first or last endpoint in an encrypted network starts or ends its peering
                # with the members (plugin.encryption.tunnel_peers); else it waited for a heartbeat
                self.follow_tunnel()
            self._announce(network_id, announce.values())

    def _index_names(self, network_id: str) -> None:
        endpoints = self.endpoints.get(network_id)
        if endpoints is None:
            self.names.drop(network_id)
            return
        network = self.networks.get(network_id)
        self.names.update(network_id, network.name if network else "", list(endpoints.values()))
