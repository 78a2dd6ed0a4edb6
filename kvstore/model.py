"""Records the store keeps, and the errors it raises. Values are stored as versioned JSON (``"v": 1``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
GATEWAY_OWNER = "gateway"
CONTAINER_KIND = "container"  # Endpoint.kind of a container's endpoint
HOST_KIND = "host"  # Endpoint.kind of a host's own address on a network (pyoverlay expose)
ENCRYPTED_OPTION = "encrypted"  # Network.options key, "true" when set (Docker's overlay spelling)
REQUEST_OWNER_PREFIX = "request-"  # owns an address requested without a MAC, until adopt_address


class StoreError(Exception):
    """Base of every error a store raises."""


class NotFound(StoreError):
    pass


class InvalidRequest(StoreError):
    """A malformed argument: a CIDR or address that does not parse, an ip_range outside its subnet, …"""


class Conflict(StoreError):
    """The request contradicts what the store holds (overlapping pool, address taken, …)."""


class IdentityConflict(Conflict):
    """This host's id is registered, alive, by a host at another address: a cloned state directory."""


class Exhausted(StoreError):
    """No free pool, address or VNI is left."""


class StoreUnavailable(StoreError):
    """The backing store could not be reached; nothing was written (or a retry is idempotent)."""


class Compacted(StoreError):
    """The requested watch revision was compacted away: re-list with snapshot()."""


def _record(cls, data: dict[str, Any]):
    names = cls.__dataclass_fields__.keys()
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Pool:
    """An IPv4 or IPv6 pool. ``pool_id`` is the subnet in CIDR form: the same subnet gives the same PoolID
    on every host."""

    pool_id: str
    subnet: str
    ip_range: str | None = None  # dynamic allocations come from here when set (docker --ip-range)
    holders: tuple[str, ...] = ()  # host ids that requested the pool and have not released it
    # the prefix length of its address blocks (kvstore/blocks.py), fixed when the pool is made so that
    # every host splits it alike; 0: no blocks (a pool made before blocks, or too small for them)
    block_prefixlen: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, **asdict(self), "holders": list(self.holders)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pool:
        return _record(cls, {**data, "holders": tuple(data.get("holders", ()))})


@dataclass(frozen=True)
class Network:
    """A cluster network: the same on every host. Hosts bind their own Docker NetworkID to it."""

    network_id: str  # cluster id: the Docker NetworkID on the host that created it first
    vni: int
    subnet: str | None = None  # IPv4; None for IPv6-only networks and on Docker's default IPAM
    pool_id: str | None = None  # set when the pyoverlay IPAM driver owns the addresses
    gateway: str | None = None
    ip_range: str | None = None
    subnet6: str | None = None  # IPv6 (docker network create --ipv6)
    pool6_id: str | None = None
    gateway6: str | None = None
    ip_range6: str | None = None
    name: str = ""  # learned from the creating host's daemon after creation
    mtu: int | None = None  # from com.docker.network.driver.mtu
    options: dict[str, str] = field(default_factory=dict)  # generic driver options as given
    created_by: str = ""  # host id

    @property
    def encrypted(self) -> bool:
        """Made with `-o encrypted`: its traffic between hosts goes inside WireGuard."""
        return self.options.get(ENCRYPTED_OPTION) == "true"

    @property
    def pool_ids(self) -> tuple[str, ...]:
        """The network's pyoverlay pools, IPv4 first; the first is its identity across hosts."""
        return tuple(p for p in (self.pool_id, self.pool6_id) if p)

    def to_json(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Network:
        return _record(cls, data)


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str  # Docker EndpointID (globally unique)
    network_id: str  # cluster network id
    host_id: str
    vtep: str  # underlay address of the host's VXLAN device
    mac: str
    address: str | None = None  # IPv4 in CIDR form (10.0.0.5/24)
    container_name: str = ""  # learned from the local daemon after Join
    aliases: tuple[str, ...] = ()  # the container's other names on this network (--network-alias, …)
    kind: str = CONTAINER_KIND  # HOST_KIND: the host's own address on the network, on its bridge (no veth)
    address6: str | None = None  # IPv6 in CIDR form (fd00:1::5/64)

    @property
    def ip(self) -> str | None:
        """The IPv4 address without its prefix length (10.0.0.5), or None."""
        return self.address.split("/")[0] if self.address else None

    @property
    def ip6(self) -> str | None:
        """The IPv6 address without its prefix length (fd00:1::5), or None."""
        return self.address6.split("/")[0] if self.address6 else None

    @property
    def address_owner(self) -> str:
        """Who owns the endpoint's address in the pool: a container's MAC, a host exposure's own id."""
        return self.endpoint_id if self.kind == HOST_KIND else self.mac

    def to_json(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, **asdict(self), "aliases": list(self.aliases)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Endpoint:
        return _record(cls, {**data, "aliases": tuple(data.get("aliases", ()))})


@dataclass(frozen=True)
class Host:
    host_id: str
    address: str  # underlay (VTEP) address
    hostname: str = ""
    # its end of encrypted networks' tunnels: WireGuard public key (base64) and UDP port ("" / 0: none)
    public_key: str = ""
    tunnel_port: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Host:
        return _record(cls, data)


@dataclass(frozen=True)
class Event:
    """A change seen by a watch; ``record`` is None on delete. Kinds: "network" (key_id: network_id,
    record: Network), "endpoint" (endpoint_id, Endpoint), "binding" (the host's docker_network_id, the
    cluster network_id it binds)."""

    kind: str
    action: str  # "put" | "delete"
    key_id: str
    record: Network | Endpoint | str | None
    revision: int
