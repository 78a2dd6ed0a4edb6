"""The one reconciler of a host: the only writer of FDB and neighbour entries for remote endpoints.

It lists the store at revision R, programs the kernel, then watches from R+1; on a compacted revision or a
lost connection it lists again and diffs. What to program is computed by driver.peers' pure functions."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from driver import Dataplane, DataplaneError
from driver.peers import Peer, desired_state, diff
from kvstore import Compacted, Endpoint, Network, NotFound, Store, StoreError

log = logging.getLogger(__name__)


def remote_peers(host_id: str, network_id: str, endpoints: dict[str, Endpoint]) -> list[Peer]:
    """Endpoints of the network on other hosts, as the dataplane programs them."""
    return [
        Peer(mac=e.mac, ip=e.address.split("/")[0] if e.address else None, vtep=e.vtep)
        for e in endpoints.values()
        if e.network_id == network_id and e.host_id != host_id
    ]


class Reconciler:
    def __init__(
        self,
        store: Store,
        dataplane: Dataplane,
        host_id: str,
        ensure_devices: Callable[[Network], None],
        on_network_event: Callable[[str, Network | None], None] = lambda network_id, network: None,
        watch_timeout: float = 0.5,
    ) -> None:
        self.store = store
        self.dataplane = dataplane
        self.host_id = host_id
        self.ensure_devices = ensure_devices  # builds bridge + VXLAN of a network bound here
        self.on_network_event = on_network_event  # the Docker side follows networks made or removed elsewhere
        self.watch_timeout = watch_timeout
        self.networks: dict[str, Network] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.bound: set[str] = set()  # cluster ids of networks bound on this host
        self._dirty: set[str] = set()
        self._lock = threading.Lock()

    def kick(self, network_id: str) -> None:
        """A handler changed a network or its endpoints on this host: re-read bindings and re-sync it."""
        with self._lock:
            self._dirty.add(network_id)

    def run(self, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                revision = self.relist()
                backoff = 0.5
                while not stop.is_set():
                    revision = self.follow(revision)
                    self.flush_kicks()
            except Compacted:
                log.info("watch revision compacted; listing again")
            except StoreError as exc:
                log.warning("store unavailable (%s); listing again in %.1fs", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:  # one bad pass never stops the loop
                log.exception("reconciler pass failed")
                stop.wait(backoff)

    def relist(self) -> int:
        networks, endpoints, revision = self.store.snapshot()
        self.networks = {n.network_id: n for n in networks}
        self.endpoints = {e.endpoint_id: e for e in endpoints}
        self.bound = set(self.store.bindings(self.host_id).values())
        for network in networks:
            self.on_network_event(network.network_id, network)
        for network_id in self.bound:
            self.sync(network_id, ensure=True)
        self.collect_devices()
        return revision + 1

    def collect_devices(self) -> None:
        """Remove the devices of networks no longer bound here (removed on another host, or while the agent
        was down). Devices are listed before bindings are read: a network being created has its binding
        written before its devices, so it is never taken for garbage."""
        present = self.dataplane.network_vnis()
        wanted = set()
        for network_id in self.store.bindings(self.host_id).values():
            try:
                wanted.add(self.store.get_network(network_id).vni)
            except NotFound:
                continue
        for vni in present - wanted:
            log.info("removing devices of VNI %d: no network bound here uses it", vni)
            try:
                self.dataplane.delete_network(vni)
            except DataplaneError as exc:
                log.warning("VNI %d: %s", vni, exc)

    def follow(self, revision: int) -> int:
        """Apply watch events from ``revision`` until the watch is idle; return the next revision."""
        for event in self.store.watch(revision, timeout=self.watch_timeout):
            revision = event.revision + 1
            if event.kind == "endpoint":
                old = self.endpoints.pop(event.key_id, None)
                if isinstance(event.record, Endpoint):
                    self.endpoints[event.key_id] = event.record
                for network_id in {e.network_id for e in (old, event.record) if isinstance(e, Endpoint)}:
                    self.sync(network_id)  # at once: convergence time is what users feel
            elif event.kind == "network":
                record = event.record if isinstance(event.record, Network) else None
                if record:
                    self.networks[event.key_id] = record
                else:
                    self.networks.pop(event.key_id, None)
                self.on_network_event(event.key_id, record)
            self.flush_kicks()
        return revision

    def flush_kicks(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        if not dirty:
            return
        self.bound = set(self.store.bindings(self.host_id).values())
        self.collect_devices()
        for network_id in dirty - {""}:
            try:
                self.networks[network_id] = self.store.get_network(network_id)
            except NotFound:
                self.networks.pop(network_id, None)
            self.sync(network_id, ensure=True)

    def sync(self, network_id: str, ensure: bool = False) -> None:
        """Program the network's remote peers; a failure is logged, and the next event for the network
        or the next relist tries again."""
        network = self.networks.get(network_id)
        if network is None or network_id not in self.bound:
            return
        try:
            if ensure:
                self.ensure_devices(network)
            peers = remote_peers(self.host_id, network_id, self.endpoints)
            desired = desired_state(peers, {p.vtep for p in peers})
            changes = diff(desired, self.dataplane.read_peers(network.vni))
            for error in self.dataplane.apply_peers(network.vni, changes):
                log.warning("network %s: %s", network_id[:12], error)
        except DataplaneError as exc:
            log.warning("network %s: %s", network_id[:12], exc)
