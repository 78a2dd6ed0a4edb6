"""IpamDriver logic: pools and addresses live in the store, so every host sees the same ones."""

from __future__ import annotations

import ipaddress
import logging
import secrets
from dataclasses import dataclass

from kvstore import GATEWAY_OWNER, REQUEST_OWNER_PREFIX, HostStore, NotFound, Store, StoreUnavailable

from .. import failpoints
from ..errors import BadRequest, ConflictError
from ..messages import ReleaseAddressRequest, RequestAddressRequest, RequestPoolRequest

ADDRESS_SPACE = "pyoverlay"

log = logging.getLogger(__name__)


@dataclass
class IpamService:
    store: Store
    host_id: str
    default_pool: str
    default_pool_size: int
    default_pool6: str = "fd70:796f:7600::/48"
    default_pool6_size: int = 64
    block_size: int = 0  # new pools' address blocks (kvstore/blocks.py); 0: none
    block_size6: int = 0
    # this host's blocks and its work while the store is away; shared with the NetworkService
    host: HostStore | None = None

    def __post_init__(self) -> None:
        if self.host is None:
            self.host = HostStore(self.store, self.host_id, None)

    def capabilities(self) -> dict[str, bool]:
        # No MAC: Docker would make up a random one, put it on the container and forbid the network driver
        # to answer another, so a MAC derived from the address (stable across reconnects) needs it off.
        # No replay: the store is durable; replaying every address would only re-confirm what it holds.
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def default_address_spaces(self) -> dict[str, str]:
        return {"LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": ADDRESS_SPACE}

    def request_pool(self, req: RequestPoolRequest) -> dict[str, object]:
        if req.address_space not in ("", ADDRESS_SPACE):
            raise BadRequest(f"unknown address space {req.address_space!r}; pyoverlay has {ADDRESS_SPACE!r}")
        version = 6 if req.v6 else 4
        subnet = _subnet(req.pool, "Pool", version) if req.pool else None
        ip_range = _subnet(req.sub_pool, "SubPool", version) if req.sub_pool else None
        if ip_range and not subnet:
            raise BadRequest("--ip-range needs --subnet")
        if ip_range and not ipaddress.ip_network(ip_range).subnet_of(ipaddress.ip_network(subnet)):  # type: ignore[arg-type]
            raise BadRequest(f"ip range {ip_range} is not inside subnet {subnet}")
        if subnet:
            self._refuse_second_network(subnet)
        default, size = (
            (self.default_pool6, self.default_pool6_size)
            if req.v6
            else (self.default_pool, self.default_pool_size)
        )
        if self.host.away:
            raise StoreUnavailable(
                "etcd is unreachable from this host: a new network needs it (its subnet and VNI must be "
                "unique across hosts); try again once etcd answers"
            )
        block_size = self.block_size6 if req.v6 else self.block_size
        pool = self.store.request_pool(self.host_id, subnet, ip_range, default, size, block_size)
        failpoints.hit("RequestPool.after_store")
        return {"PoolID": pool.pool_id, "Pool": pool.subnet, "Data": {}}

    def _refuse_second_network(self, subnet: str) -> None:
        # Refused here, not in CreateNetwork: Docker releases a pool after a failed CreateNetwork, which
        # would drop this host's hold on a pool its first network still uses.
        for docker_id, network_id in self.store.bindings(self.host_id).items():
            try:
                network = self.store.get_network(network_id)
            except NotFound:
                continue
            if subnet in network.pool_ids:
                name = network.name or docker_id[:12]  # the name is learned shortly after creation
                raise ConflictError(
                    f"subnet {subnet} is already used by network {name} on this host; "
                    f"use network {name}, or give the new network another --subnet"
                )

    def release_pool(self, pool_id: str) -> None:
        self.host.release_pool(pool_id)
        failpoints.hit("ReleasePool.after_store")

    def request_address(
        self, req: RequestAddressRequest, request_key: str | None = None
    ) -> dict[str, object]:
        pool = self.host.get_pool(req.pool_id)
        if req.is_gateway:
            owner = GATEWAY_OWNER
        elif req.mac:
            owner = req.mac  # a key that makes a resent request idempotent, from a Docker that sends one
        else:
            # Docker (< 29) sends no key without RequiresMACAddress: each request owns its address, so a
            # second container asking for a taken --ip gets a conflict (a resent request does too)
            # until CreateEndpoint adopts it; a request resent after a crash has the same key (its journal's)
            owner = REQUEST_OWNER_PREFIX + (request_key or secrets.token_hex(8))
        address = self.host.reserve_address(pool, owner, req.address)
        failpoints.hit("RequestAddress.after_store")
        prefixlen = ipaddress.ip_network(pool.subnet).prefixlen
        return {"Address": f"{address}/{prefixlen}", "Data": {}}

    def release_address(self, req: ReleaseAddressRequest) -> None:
        # while the store is away the release is journalled on disk and published when it is back:
        # Docker ignores a failed release, and the address would stay taken
        self.host.release_address(req.pool_id, req.address)
        failpoints.hit("ReleaseAddress.after_store")


def _subnet(value: str, what: str, version: int) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise BadRequest(f"{what} {value!r} is not a subnet in CIDR form") from None
    if net.version != version:
        raise BadRequest(f"{what} {value!r} is not an IPv{version} subnet")
    if str(net) != value:
        raise BadRequest(f"{what} {value!r} has host bits set; did you mean {net}?")
    return str(net)
