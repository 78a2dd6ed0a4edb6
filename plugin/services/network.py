"""NetworkDriver logic. The store is written first and the kernel second, so that a request Docker resends
after a crash finds the record and only has to ensure the devices; a kernel failure undoes the record."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from driver import Dataplane, DataplaneError
from kvstore import HOST_KIND, Endpoint, HostStore, Network, NotFound, Store, StoreUnavailable

from .. import failpoints
from ..encryption import HostTunnel
from ..errors import BadRequest, UnknownObject
from ..messages import (
    ENCRYPTED_OPTION,
    MTU_OPTION,
    CreateEndpointRequest,
    CreateNetworkRequest,
    EndpointRequest,
    IPAMData,
)
from .ipam import ADDRESS_SPACE

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


def fix_command(driver: str = "pyoverlay") -> str:
    """The command that makes a network right; ``driver`` as this host's daemon names us (a managed
    plugin's name carries its tag: docs/install.md, "The driver name")."""
    return f"docker network create -d {driver} --ipam-driver {driver} [--subnet CIDR] NAME"


@dataclass
class NetworkService:
    store: Store
    dataplane: Dataplane
    host_id: str
    vtep: str
    underlay_mtu: int
    vxlan_port: int
    embedded: bool
    on_change: Callable[[str], None] = lambda network_id: None  # kicks the event loop for a network
    # the name `docker network create -d` takes for us here, for errors; never asks dockerd (Agent wires it)
    driver_name: Callable[[], str] = lambda: "pyoverlay"
    # Docker's NetworkID here -> the cluster network's VNI, as looked up: a binding is this host's own and
    # a VNI never changes, so DeleteEndpoint needs no store round trip to find the veth's namespace
    _vnis: dict[str, int] = field(default_factory=dict, repr=False)
    # endpoints and their networks through this host's copies while the store is away (kvstore/host_store.py)
    host: HostStore | None = None
    tunnel: HostTunnel | None = None  # this host's end of encrypted networks (plugin/encryption.py)

    def __post_init__(self) -> None:
        if self.host is None:
            self.host = HostStore(self.store, self.host_id, None)

    def capabilities(self) -> dict[str, str]:
        return {"Scope": "local", "ConnectivityScope": "global"}

    def max_mtu(self, encrypted: bool = False) -> int:
        if encrypted and self.tunnel is not None:
            return self.tunnel.vxlan_mtu()  # WireGuard's headers and VXLAN over IPv6 inside
        return self.underlay_mtu - VXLAN_OVERHEAD

    def mtu_for(self, network: Network) -> int:
        # capped, not refused: a network made on a host with a larger underlay still works here
        most = self.max_mtu(network.encrypted)
        return min(most, network.mtu) if network.mtu else most

    def ensure_devices(self, network: Network) -> None:
        """The network's bridge and VXLAN device; an encrypted network's VXLAN device sends from this
        host's tunnel address, through the tunnel device (made here when it is the first)."""
        local = self.vtep
        if network.encrypted:
            if self.tunnel is None:
                raise DataplaneError("this agent carries no encrypted networks (it has no tunnel)")
            self.tunnel.ensure()
            local = self.tunnel.address
        self.dataplane.ensure_network(network.vni, self.mtu_for(network), local, self.vxlan_port)

    # -- networks -----------------------------------------------------------------------------------

    def create_network(self, req: CreateNetworkRequest) -> None:
        data, data6 = _subnets(req)
        owned = all(d.address_space == ADDRESS_SPACE for d in (data, data6) if d)
        if not owned and not self.embedded:
            # Docker's default IPAM only keeps addresses unique per host: across hosts they would collide
            raise BadRequest(
                "with the etcd store pyoverlay networks need pyoverlay's IPAM, which keeps addresses "
                f"unique across hosts; use: {fix_command(self.driver_name())}"
            )
        encrypted = req.generic.get(ENCRYPTED_OPTION) == "true"
        if req.mtu and req.mtu > self.max_mtu(encrypted):
            pool_id = (data or data6).pool if owned else None  # type: ignore[union-attr]
            self._check_mtu(req.mtu, pool_id, encrypted)
        pool = self.store.get_pool(data.pool) if owned and data else None
        pool6 = self.store.get_pool(data6.pool) if owned and data6 else None
        wanted = Network(
            network_id=req.docker_network_id,  # the creating host's Docker id becomes the cluster id
            vni=0,
            subnet=data.pool if data else None,
            pool_id=pool.pool_id if pool else None,
            gateway=data.gateway.split("/")[0] if data and data.gateway else None,
            ip_range=pool.ip_range if pool else None,
            subnet6=data6.pool if data6 else None,
            pool6_id=pool6.pool_id if pool6 else None,
            gateway6=data6.gateway.split("/")[0] if data6 and data6.gateway else None,
            ip_range6=pool6.ip_range if pool6 else None,
            mtu=req.mtu,
            options=req.generic,
            created_by=self.host_id,
        )
        try:
            existing = self.store.network_for(self.host_id, req.docker_network_id)
        except NotFound:
            existing = None
        network = existing or self.store.create_network(self.host_id, req.docker_network_id, wanted)
        failpoints.hit("CreateNetwork.after_store")
        try:
            self.ensure_devices(network)
        except DataplaneError:
            if existing is None and network.network_id == req.docker_network_id:
                self._undo_create(req.docker_network_id, network)
            elif existing is None:
                # joined a network made elsewhere: deleting it would remove it (or our membership) for all
                self.store.unbind(self.host_id, req.docker_network_id)
            raise
        failpoints.hit("CreateNetwork.after_kernel")
        self.on_change(network.network_id)

    def _check_mtu(self, mtu: int, pool_id: str | None, encrypted: bool) -> None:
        """Refuse an MTU the underlay cannot carry, unless the network exists already (made on a host
        with a larger underlay, or this request resent): then it is capped here."""
        made = None
        if pool_id:
            made = next((n for n in self.store.list_networks() if pool_id in n.pool_ids), None)
        most = self.max_mtu(encrypted)
        if made is None:
            headers = (
                f"{self.underlay_mtu - most} bytes of WireGuard and VXLAN headers"
                if encrypted
                else f"{VXLAN_OVERHEAD} bytes of VXLAN headers"
            )
            raise BadRequest(
                f"-o {MTU_OPTION}={mtu} is more than this host's underlay carries: containers can have "
                f"at most {most} (underlay MTU {self.underlay_mtu} - {headers}). Use -o "
                f"{MTU_OPTION}={most} or less, leave the option out to get {most}, or raise the "
                "underlay's MTU"
            )
        log.warning(
            "network %s asks for MTU %d; this host's underlay (MTU %d) allows %d: capped",
            made.name or made.network_id[:12],
            mtu,
            self.underlay_mtu,
            most,
        )

    def _undo_create(self, docker_network_id: str, network: Network) -> None:
        try:
            self.dataplane.delete_network(network.vni)
        finally:
            self.store.delete_network(self.host_id, docker_network_id)

    def delete_network(self, docker_network_id: str) -> None:
        self._vnis.pop(docker_network_id, None)
        try:
            network = self.store.network_for(self.host_id, docker_network_id)
        except NotFound:
            # a resent request, or the cluster network was removed on another host: drop what is left of
            # the binding; the event loop removes devices no bound network wants
            self.store.delete_network(self.host_id, docker_network_id)
            self.on_change("")
            return
        # a host's exposure (pyoverlay expose) has no veth and keeps no network: the store drops it
        endpoints = [e for e in self.store.list_endpoints(network.network_id) if e.kind != HOST_KIND]
        for endpoint in endpoints:
            if endpoint.host_id == self.host_id:
                # Docker only deletes networks without endpoints: these are leftovers of a crash, whose
                # records store.delete_network removes; their veths go with the bridge below
                with contextlib.suppress(DataplaneError):
                    self.dataplane.delete_endpoint(endpoint.endpoint_id, network.vni)
        if not self.store.delete_network(self.host_id, docker_network_id):
            # Docker ignores a DeleteNetwork error, so this cannot be refused: the host leaves the network
            hosts = sorted({e.host_id for e in endpoints if e.host_id != self.host_id})
            if hosts:
                log.warning(
                    "network %s still has endpoints on hosts %s: removed from this host only",
                    network.name or docker_network_id[:12],
                    ", ".join(hosts),
                )
        failpoints.hit("DeleteNetwork.after_store")
        self.dataplane.delete_network(network.vni)
        failpoints.hit("DeleteNetwork.after_kernel")
        # a kick naming the network would make an event loop that has not yet seen the binding go sync it,
        # rebuilding its devices once more; a bare kick only collects devices no bound network wants
        self.on_change("")

    def network(self, docker_network_id: str) -> Network:
        try:
            network = self.host.network_for(docker_network_id)
        except NotFound:
            raise UnknownObject(
                f"network {docker_network_id[:12]} is not a pyoverlay network on this host"
            ) from None
        self._vnis[docker_network_id] = network.vni
        return network

    # -- endpoints ----------------------------------------------------------------------------------

    def create_endpoint(self, req: CreateEndpointRequest) -> dict[str, object]:
        network = self.network(req.docker_network_id)
        name = network.name or req.docker_network_id[:12]
        for address, subnet, pool_id, family in (
            (req.address, network.subnet, network.pool_id, "IPv4"),
            (req.ipv6_address, network.subnet6, network.pool6_id, "IPv6"),
        ):
            if pool_id and address is None:
                raise BadRequest(f"endpoint {req.endpoint_id[:12]} on network {name} has no {family} address")
            if address and not subnet:
                raise BadRequest(f"network {name} has no {family} subnet for address {address}")
            if address and address.network.with_prefixlen != subnet:
                raise BadRequest(f"address {address} is not in network {name}'s subnet {subnet}")
        # user-set (--mac-address) or derived: IPAM asks for no MAC, so Docker sends one only if set
        derived_from = req.address or req.ipv6_address
        mac = req.mac or (mac_for_address(derived_from) if derived_from else mac_for(req.endpoint_id))
        endpoint = Endpoint(
            endpoint_id=req.endpoint_id,
            network_id=network.network_id,
            host_id=self.host_id,
            vtep=self.vtep,
            mac=mac,
            address=str(req.address) if req.address else None,
            address6=str(req.ipv6_address) if req.ipv6_address else None,
        )
        try:
            current = self.host.get_endpoint(req.endpoint_id)
        except NotFound:
            current = None
        if current is not None and _identity(current) != _identity(endpoint):
            raise BadRequest(f"endpoint {req.endpoint_id[:12]} exists with other settings")
        if current is None:
            # the IPAM got no MAC: the address becomes the MAC's, as forget_host and Docker sync expect,
            # in the endpoint record's own transaction
            adopt = network.pool_id if network.pool_id and req.address else None
            adopt6 = network.pool6_id if network.pool6_id and req.ipv6_address else None
            self.host.put_endpoint(endpoint, adopt, adopt6)
        failpoints.hit("CreateEndpoint.after_store")
        mtu = self.mtu_for(network)
        try:
            if not self.dataplane.has_network(network.vni):
                # devices vanished (host reboot): rebuild rather than fail; the event loop checks drift
                self.ensure_devices(network)
            # the port takes frames from this MAC and these addresses only (Docker's --mac-address, --ip)
            addresses = tuple(str(a.ip) for a in (req.address, req.ipv6_address) if a)
            self.dataplane.ensure_endpoint(network.vni, req.endpoint_id, mac, mtu, addresses)
        except DataplaneError:
            self._remove_endpoint(req.endpoint_id, network.vni)
            raise
        failpoints.hit("CreateEndpoint.after_kernel")
        # only fields Docker left empty are answered: echoing one it set is an error
        return {"Interface": {} if req.mac else {"MacAddress": mac}}

    def delete_endpoint(self, req: EndpointRequest) -> None:
        # the network's namespace holds the veth's port: without its VNI, every network's is searched
        vni = self._vnis.get(req.docker_network_id)
        if vni is None:
            with contextlib.suppress(NotFound, StoreUnavailable):
                vni = self.host.network_for(req.docker_network_id).vni
        self._remove_endpoint(req.endpoint_id, vni, failpoint="DeleteEndpoint")

    def _remove_endpoint(self, endpoint_id: str, vni: int | None, failpoint: str = "") -> None:
        try:
            self.dataplane.delete_endpoint(endpoint_id, vni)
            failpoints.hit(f"{failpoint}.after_kernel")
        finally:
            self.host.delete_endpoint(endpoint_id)
        failpoints.hit(f"{failpoint}.after_store")

    def endpoint(self, req: EndpointRequest) -> Endpoint:
        return self._endpoint_on_network(req)[0]

    def _endpoint_on_network(self, req: EndpointRequest) -> tuple[Endpoint, Network]:
        try:
            endpoint = self.host.get_endpoint(req.endpoint_id)
        except NotFound:
            raise UnknownObject(f"endpoint {req.endpoint_id[:12]} is not known to pyoverlay") from None
        network = self.network(req.docker_network_id)
        if endpoint.network_id != network.network_id:
            raise UnknownObject(
                f"endpoint {req.endpoint_id[:12]} is not on network "
                f"{network.name or req.docker_network_id[:12]}"
            )
        return endpoint, network

    def join(self, req: EndpointRequest) -> dict[str, object]:
        endpoint, network = self._endpoint_on_network(req)  # the network read once, not again by its id
        # CreateEndpoint has just ensured the pair: Join only checks it (and ensures it if it changed)
        addresses = tuple(ip for ip in (endpoint.ip, endpoint.ip6) if ip)
        container_side = self.dataplane.join_endpoint(
            network.vni, endpoint.endpoint_id, endpoint.mac, self.mtu_for(network), addresses
        )
        failpoints.hit("Join.after_kernel")
        for ip in (endpoint.ip, endpoint.ip6):
            if not ip:
                continue
            # neighbours on this host that cached another MAC for the address update it at once
            try:
                self.dataplane.announce(network.vni, ip, endpoint.mac)
            except DataplaneError as exc:
                log.warning("endpoint %s: %s", endpoint.endpoint_id[:12], exc)
        # No Gateway: Docker then attaches docker_gwbridge for outbound NAT and -p publishing.
        return {"InterfaceName": {"SrcName": container_side, "DstPrefix": "eth"}}

    def oper_info(self, req: EndpointRequest) -> dict[str, object]:
        endpoint = self.endpoint(req)
        return {
            "Value": {
                "MacAddress": endpoint.mac,
                "Address": endpoint.address or "",
                "VTEP": endpoint.vtep,
                "Host": endpoint.host_id,
            }
        }


def _subnets(req: CreateNetworkRequest) -> tuple[IPAMData | None, IPAMData | None]:
    """The network's IPv4 and IPv6 subnet as Docker sent them (IPv6-only: no IPv4); BadRequest for
    what pyoverlay cannot make."""
    if req.ipv4_disabled and req.ipv4:
        # Docker < 27 knows no --ipv4=false: it allocates IPv4 anyway and passes the option on
        raise BadRequest(
            "this Docker version gives every network IPv4 addresses: IPv6-only networks need Docker 28 or "
            "later (docker network create --ipv4=false --ipv6 ...); leave out com.docker.network.enable_ipv4"
        )
    if not req.ipv4_disabled and len(req.ipv4) != 1:
        raise BadRequest(f"pyoverlay networks have exactly one IPv4 subnet, got {len(req.ipv4)}")
    if req.ipv6_requested and len(req.ipv6) != 1:
        raise BadRequest(
            f"pyoverlay IPv6 networks have exactly one IPv6 subnet, got {len(req.ipv6)}; "
            "create the network with --ipv6 (and at most one IPv6 --subnet)"
        )
    if req.ipv6 and not req.ipv6_requested:
        raise BadRequest("an IPv6 --subnet needs --ipv6")
    return (req.ipv4[0] if req.ipv4 else None), (req.ipv6[0] if req.ipv6 else None)


def _identity(endpoint: Endpoint) -> tuple[str, str, str, str | None, str | None]:
    return (endpoint.network_id, endpoint.host_id, endpoint.mac, endpoint.address, endpoint.address6)


def mac_for_address(
    address: ipaddress.IPv4Interface
    | ipaddress.IPv4Address
    | ipaddress.IPv6Interface
    | ipaddress.IPv6Address,
) -> str:
    """02:42 and the four bytes of the IPv4 address, as Docker's bridge and overlay drivers derive it: the
    same IP gets the same MAC on every host and every reuse, so neighbours' ARP and NDP caches stay right.
    For an IPv6 address (an endpoint on an IPv6-only network) the same rule takes its last four bytes:
    unique within a network as long as its addresses differ there (they do, as pyoverlay hands them
    out; two --ip6 differing only above the last 32 bits would share a MAC)."""
    ip = address.ip if isinstance(address, ipaddress.IPv4Interface | ipaddress.IPv6Interface) else address
    return ":".join(f"{b:02x}" for b in (0x02, 0x42, *ip.packed[-4:]))


def mac_for(endpoint_id: str) -> str:
    """A locally administered unicast MAC derived from the endpoint ID (stable across retries), for an
    endpoint without an IPv4 address."""
    digest = hashlib.sha256(endpoint_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))
