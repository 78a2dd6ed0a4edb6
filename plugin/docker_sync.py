"""The Docker side of a host: the only code that calls this host's daemon, always from its own thread
(a request handler that called the daemon would deadlock: the daemon is waiting on that handler).

Each pass compares the daemon with the store and closes the gaps:
- names: a network's name and an endpoint's container name and aliases are learned from the daemon and
  recorded; the addresses of every container here are handed to the name service (who is asking);
- a cluster network with no binding here is created in this daemon (same name, subnet, range, gateway);
- a network bound here whose cluster record is gone (removed on another host) is removed here too.
Passes run on Docker events, on store network events, and every few seconds as a safety net. This host's
endpoints are read from the event loop's view (kept current by its watches), not from the store."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from docker.types import IPAMConfig, IPAMPool

from driver import DataplaneError
from kvstore import HOST_KIND, Endpoint, Network, NotFound, Store, StoreError

from .containers import (
    GATEWAY_BRIDGE,
    Attached,
    attached_endpoints,
    container_addresses,
    inspected_aliases,
)
from .event_loop import View
from .messages import IPV4_OPTION
from .nameservice.index import Askers

log = logging.getLogger(__name__)

RESYNC_SECONDS = 5.0
UNIX_SOCKET_URL = "http+docker://localhost"  # the docker SDK's base URL for a daemon on a unix socket
# How long an own endpoint may be in no container (and its veth gone, or in no container either) before it
# is removed: longer than Docker's ~30 s of retries of a request that met an agent restart.
STALE_SECONDS = 30.0


class DockerSync:
    def __init__(
        self,
        store: Store,
        host_id: str,
        local_endpoint_prefixes: Callable[[], set[str]],
        view: Callable[[], View],
        kick: Callable[[str], None] = lambda network_id: None,
        driver_name: str = "",
        askers: Askers | None = None,
        loose_endpoint_prefixes: Callable[[], set[str]] = set,
        remove_veth: Callable[[str], None] = lambda endpoint_id: None,
    ) -> None:
        self.store = store
        self.host_id = host_id
        self.local_endpoint_prefixes = local_endpoint_prefixes  # id prefixes of the veths on this host
        self.loose_endpoint_prefixes = loose_endpoint_prefixes  # of those whose container side is here
        self.remove_veth = remove_veth
        self.view = view  # the event loop's view: this host's endpoints
        self.kick = kick  # tells the event loop a network changed here
        self._stale: dict[str, float] = {}  # own endpoint id -> since when it has no veth and no container
        self._missing: dict[str, float] = {}  # bound Docker network id -> since when this daemon lacks it
        self.driver_name = driver_name  # "" = found out from the daemon (managed plugins carry a tag)
        self._wake = threading.Event()
        self.askers = askers or Askers()  # filled for the name service on every pass
        self._aliases: dict[str, tuple[str, ...]] = {}  # endpoint id -> its container's aliases there
        self._client: docker.DockerClient | None = None

    def wake(self, *_: object) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        threading.Thread(target=self._follow_events, args=(stop,), name="docker-events", daemon=True).start()
        while not stop.is_set():
            try:
                self.sync_once()
            except (docker.errors.DockerException, StoreError) as exc:
                log.warning("docker sync: %s", exc)
                self._client = None
            except Exception:
                log.exception("docker sync pass failed")
            self._wake.wait(RESYNC_SECONDS)
            self._wake.clear()

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.from_env(timeout=30)  # DOCKER_HOST names the daemon
            if self._client.api.base_url == UNIX_SOCKET_URL:
                # no proxy or .netrc applies on a unix socket; requests would look both up per call
                self._client.api.trust_env = False
        return self._client

    def _follow_events(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client = docker.from_env()
                for _ in client.events(decode=True, filters={"type": ["network", "container"]}):
                    self._wake.set()
                    if stop.is_set():
                        return
            except Exception as exc:  # the daemon restarting: try again shortly
                log.debug("docker events: %s", exc)
            stop.wait(2)

    def our_driver(self) -> str:
        if not self.driver_name:
            plugin_id = managed_plugin_id()
            self.driver_name = self._docker().plugins.get(plugin_id).name if plugin_id else "pyoverlay"
        return self.driver_name

    def sync_once(self) -> None:
        client = self._docker()
        driver = self.our_driver()
        networks = client.networks.list()  # one listing per pass, ours picked out here
        local = {n.id: n for n in networks if n.attrs.get("Driver") == driver}
        view = self.view()
        attached = self._learn_containers(client, local, view)  # first: names are what users wait for
        # Networks and bindings are read from the store itself: creating or removing a network here is
        # decided on one consistent read (the loop's scopes may stand at different revisions).
        bindings = self.store.bindings(self.host_id)
        cluster = {n.network_id: n for n in self.store.list_networks()}
        self._sweep_bindings(bindings, local)
        for docker_id, network_id in bindings.items():
            network = cluster.get(network_id)
            if network is None:
                self._remove_local(local.get(docker_id))
            elif not network.name and docker_id in local:
                self.store.set_network_name(network_id, local[docker_id].name)
        skip = set(bindings.values()) | self.store.left_networks(self.host_id)
        local_names = {n.name for n in networks}
        for network in cluster.values():
            if network.network_id in skip or not network.name or not network.pool_ids:
                continue
            if network.name in local_names:
                log.warning(
                    "network %s exists in another host's daemon, but this daemon has another "
                    "network of that name",
                    network.name,
                )
                continue
            self._create_local(client, driver, network)
        self._collect_own_garbage(set(attached), view)

    def _sweep_bindings(self, bindings: dict[str, str], local: dict[str, Any]) -> None:
        """A binding whose network this daemon no longer has (its DeleteNetwork failed, e.g. with etcd
        down: Docker removed the network anyway) is deleted as that DeleteNetwork would have, once it has
        looked so for STALE_SECONDS (a CreateNetwork in flight has its binding before Docker lists it)."""
        now = time.monotonic()
        missing = {d: self._missing.get(d, now) for d in bindings if d not in local}
        self._missing = missing
        for docker_id, since in missing.items():
            if now - since >= STALE_SECONDS:
                log.info("Docker network %s is gone from this daemon: removing its binding", docker_id[:12])
                self.store.delete_network(self.host_id, docker_id)
                self.kick("")  # its devices go

    def _create_local(self, client: docker.DockerClient, driver: str, network: Network) -> None:
        subnets = ", ".join(s for s in (network.subnet, network.subnet6) if s)
        log.info("creating network %s (%s), made on another host", network.name, subnets)
        pools = [
            IPAMPool(subnet=subnet, iprange=ip_range, gateway=gateway)
            for subnet, ip_range, gateway in (
                (network.subnet, network.ip_range, network.gateway),
                (network.subnet6, network.ip_range6, network.gateway6),
            )
            if subnet
        ]
        options = dict(network.options)
        if not network.subnet:  # IPv6-only: Docker >= 27 reads this option as --ipv4=false
            options.setdefault(IPV4_OPTION, "false")
        try:
            client.networks.create(
                network.name,
                driver=driver,
                options=options or None,
                ipam=IPAMConfig(driver=driver, pool_configs=pools),
                enable_ipv6=bool(network.subnet6),
            )
        except docker.errors.APIError as exc:
            log.warning("cannot create network %s here: %s", network.name, exc.explanation or exc)

    def _remove_local(self, local_network: Any) -> None:
        if local_network is None:
            return
        log.info("removing network %s: it was removed on another host", local_network.name)
        try:
            local_network.remove()
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            log.warning("cannot remove network %s here: %s", local_network.name, exc.explanation or exc)

    def _learn_containers(
        self, client: docker.DockerClient, local: dict[str, Any], view: View
    ) -> dict[str, Attached]:
        """Tell the name service which networks each container asks from, and record the names and
        aliases of this host's endpoints (the name service goes on with etcd away; the names wait)."""
        covers = self.askers.requests()  # the name service's requests this listing answers
        summaries = client.api.containers(all=True)
        attached = attached_endpoints(summaries, set(local))
        aliases = self._aliases_of(client, attached)
        networks_of: dict[str, set[str]] = {}  # container id -> cluster networks
        renames = []
        for endpoint_id, seen in attached.items():
            endpoint = view.endpoints.get(endpoint_id) or self._own_endpoint(endpoint_id)
            if endpoint is None:
                continue
            networks_of.setdefault(seen.container_id, set()).add(endpoint.network_id)
            names = (seen.name, aliases.get(endpoint_id, seen.aliases))
            if seen.name and (endpoint.container_name, endpoint.aliases) != names:
                renames.append((endpoint_id, *names))
        self._learn_askers(client, summaries, networks_of, covers)
        for endpoint_id, name, endpoint_aliases in renames:
            self.store.set_endpoint_name(endpoint_id, name, endpoint_aliases)  # never resurrects
        return attached

    def _learn_askers(
        self, client: docker.DockerClient, summaries: list[Any], networks_of: dict[str, set[str]], covers: int
    ) -> None:
        """Tell the name service the networks of the container behind each address of this host."""
        try:
            gateway_bridge = client.api.inspect_network(GATEWAY_BRIDGE)
        except docker.errors.NotFound:
            gateway_bridge = None
        addresses = container_addresses(summaries, gateway_bridge)
        self.askers.replace({a: frozenset(networks_of.get(c, ())) for a, c in addresses.items()}, covers)

    def _aliases_of(self, client: docker.DockerClient, attached: dict[str, Attached]) -> dict[str, tuple]:
        """endpoint_id -> aliases. The container list leaves them out: a container is inspected once per
        endpoint (aliases only change by connecting again, which makes a new endpoint)."""
        known = {e: self._aliases[e] for e in attached if e in self._aliases}
        for container_id in {a.container_id for e, a in attached.items() if e not in known}:
            try:
                found = inspected_aliases(client.api.inspect_container(container_id))
            except docker.errors.NotFound:
                continue  # removed since the listing
            known.update({e: found[e] for e in found if e in attached})
        self._aliases = known
        return known

    def _own_endpoint(self, endpoint_id: str) -> Endpoint | None:
        """An endpoint the event loop has not seen yet (created a moment ago), from the store."""
        try:
            endpoint = self.store.get_endpoint(endpoint_id)
        except StoreError:  # NotFound, or etcd away: the next pass sees it
            return None
        return endpoint if endpoint.host_id == self.host_id else None

    def _collect_own_garbage(self, joined: set[str], view: View) -> None:
        """Endpoints of this host in no container of this daemon whose veth is gone (the host rebooted, the
        plugin was disabled when the container stopped) or in no container either (Docker went on after a
        DeleteEndpoint that met an agent restart and came back without its body) are removed with their
        veth and address, once they have looked so for STALE_SECONDS. CreateEndpoint writes the record
        before the veth, and Docker moves the veth only at Join: records are read before links, and the
        grace period covers a request in flight. A veth inside a container is never taken."""
        # an exposure has no veth; links are listed only when an endpoint is in no container (a pass
        # runs on every Docker event, and a listing decodes every link of the host)
        unjoined = [e for e in view.endpoints.values() if e.kind != HOST_KIND and e.endpoint_id not in joined]
        prefixes = self.local_endpoint_prefixes() if unjoined else set()
        loose = self.loose_endpoint_prefixes() if unjoined else set()
        now = time.monotonic()
        stale = {
            e.endpoint_id: self._stale.get(e.endpoint_id, now)
            for e in unjoined
            if e.endpoint_id[:12] not in prefixes or e.endpoint_id[:12] in loose
        }
        self._stale = stale
        for endpoint_id, since in stale.items():
            if now - since < STALE_SECONDS:
                continue
            try:
                endpoint = self.store.get_endpoint(endpoint_id)
                network = self.store.get_network(endpoint.network_id)
            except NotFound:
                continue
            log.info("removing endpoint %s: in no container on this host", endpoint_id[:12])
            try:
                self.remove_veth(endpoint_id)  # first: a record gone would leave the veth unknown
            except DataplaneError as exc:
                log.warning("endpoint %s: cannot remove its veth: %s", endpoint_id[:12], exc)
                continue
            self.store.delete_endpoint(endpoint_id)
            for pool_id, address in ((network.pool_id, endpoint.ip), (network.pool6_id, endpoint.ip6)):
                # only while the endpoint's MAC still owns it: Docker may have given it to another container
                if pool_id and address and self.store.list_addresses(pool_id).get(address) == endpoint.mac:
                    self.store.release_address(pool_id, address)


def managed_plugin_id(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Inside a managed plugin, dockerd mounts /run/docker/plugins/<plugin id> at /run/docker/plugins."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/run/docker/plugins":
            root = fields[3].rstrip("/").rsplit("/", 1)[-1]
            if re.fullmatch(r"[0-9a-f]{64}", root):
                return root
    return None
