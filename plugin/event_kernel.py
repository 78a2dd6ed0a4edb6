"""The event loop's kernel side: programming what the loop's view asks of this host's datapath (remote
peers, the host's exposure, the VXLAN guards, the tunnel of encrypted networks) and collecting devices no
network needs. A failure is logged (and counted), and the next event or resync tries again."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from driver import Dataplane, DataplaneError
from driver.peers import desired_state, diff
from kvstore import Endpoint, Host, Network, NotFound, Store, StoreError

from .encryption import HostTunnel, tunnel_address
from .endpoint_rules import own_host_address, remote_peers
from .guards import VtepGuard, allowed_vteps, own_ports, sealed_members
from .metrics import Metrics

log = logging.getLogger(__name__)


class KernelSide:
    """Mixed into EventLoop, whose state it reads."""

    store: Store
    dataplane: Dataplane
    host_id: str
    metrics: Metrics
    ensure_devices: Callable[[Network], None]
    networks: dict[str, Network]
    endpoints: dict[str, dict[str, Endpoint]]
    hosts: dict[str, Host]
    tunnel: HostTunnel | None
    vtep_guard: VtepGuard
    _broken: set[str]
    _host_addresses: dict[str, tuple[str, str] | None]

    def _announce(self, network_id: str, endpoints: Iterable[Endpoint]) -> None:
        """Announce remote endpoints on this host's bridge (after sync programmed them): the VXLAN
        device answers ARP itself, so the announcement of the endpoint's own host never gets here."""
        network = self.networks.get(network_id)
        if network is None:
            return
        for endpoint in endpoints:
            for ip in (endpoint.ip, endpoint.ip6):
                if ip is None:
                    continue
                try:
                    self.dataplane.announce(network.vni, ip, endpoint.mac)
                except DataplaneError as exc:
                    self.metrics.kernel_error("announce")
                    log.warning("network %s: %s", network.name or network_id[:12], exc)

    def collect_devices(self) -> None:
        """Remove the devices of networks no longer bound here (removed on another host, or while the agent
        was down). Devices are listed before bindings are read from the store: a network being created
        has its binding written before its devices, so it is never taken for garbage."""
        try:
            present = self.dataplane.network_vnis()
            wanted = set()
            for network_id in self.store.bindings(self.host_id).values():
                network = self.networks.get(network_id)
                if network is None:
                    try:
                        network = self.store.get_network(network_id)
                    except NotFound:
                        continue
                wanted.add(network.vni)
        except (StoreError, DataplaneError) as exc:
            if isinstance(exc, DataplaneError):
                self.metrics.kernel_error("collect_devices")
            log.warning("cannot collect devices: %s", exc)
            return
        for vni in present - wanted:
            log.info("removing devices of VNI %d: no network bound here uses it", vni)
            try:
                self.dataplane.delete_network(vni)
            except DataplaneError as exc:
                self.metrics.kernel_error("collect_devices")
                log.warning("VNI %d: %s", vni, exc)

    def collect_retired_veths(self) -> None:
        """Delete the veth pairs DeleteEndpoint retired whose deferred deletion never ran (the agent
        stopped first); their names alone say they are garbage."""
        try:
            retired = self.dataplane.delete_retired_veths()
        except DataplaneError as exc:
            self.metrics.kernel_error("collect_veths")
            log.warning("cannot collect retired veths: %s", exc)
            return
        if retired:
            log.info("deleted %d retired veths left by an earlier run: %s", len(retired), " ".join(retired))

    def guard_vteps(self, force: bool = False) -> None:
        """Accept VXLAN only from the hosts plugin.guards.allowed_vteps names, and into encrypted
        networks only through the tunnel, from their member hosts."""
        self.vtep_guard.update(
            allowed_vteps(self.host_id, self.hosts, self.endpoints),
            sealed_members(self.host_id, self.networks, self.endpoints),
            force,
        )

    def follow_tunnel(self, force: bool = False) -> None:
        """The tunnel's peers: the other hosts with endpoints in encrypted networks bound here. Not while
        a scope is being listed: a partial view (endpoints before hosts) would drop peers that stay."""
        if self.tunnel is not None and not self._broken:
            self.tunnel.follow(self.networks, self.endpoints, self.hosts, force)

    def sync(self, network_id: str, ensure: bool = False) -> None:
        """Program the network's remote peers and this host's own address on it (pyoverlay expose); a
        failure is logged, and the next event for the network or the next resync tries again."""
        network = self.networks.get(network_id)
        endpoints = self.endpoints.get(network_id)
        if network is None or endpoints is None:
            return
        try:
            if ensure:
                self.ensure_devices(network)
                # port security where missing (a network made before it), gone with ports that went
                errors = self.dataplane.secure_endpoints(network.vni, own_ports(self.host_id, endpoints))
                self.metrics.kernel_error("port_security", len(errors))
                for error in errors:
                    log.warning("network %s: %s", network.name or network_id[:12], error)
            peers = remote_peers(self.host_id, endpoints, tunnel_address if network.encrypted else None)
            desired = desired_state(peers, {p.vtep for p in peers})
            changes = diff(desired, self.dataplane.read_peers(network.vni))
            errors = self.dataplane.apply_peers(network.vni, changes)
            self.metrics.kernel_error("peers", len(errors))
            for error in errors:
                log.warning("network %s: %s", network.name or network_id[:12], error)
            # what the kernel holds now: the desired entries, unless some failed
            programmed = self.dataplane.read_peers(network.vni) if errors else desired
            self.metrics.peers_programmed(network_id, network.vni, len(programmed.fdb), len(programmed.neigh))
            host_address = own_host_address(self.host_id, endpoints)
            if ensure or self._host_addresses.get(network_id) != host_address:
                self.dataplane.ensure_host_address(network.vni, *(host_address or (None, None)))
                self._host_addresses[network_id] = host_address
        except DataplaneError as exc:
            self.metrics.kernel_error("sync")
            log.warning("network %s: %s", network.name or network_id[:12], exc)
        if network.encrypted:
            self.follow_tunnel()
