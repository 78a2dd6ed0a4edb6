"""The key layout (docs/kvstore.md), the same on every key-value primitive, and value encoding."""

from __future__ import annotations

import json
from typing import Any

from .kv import Item
from .model import SCHEMA_VERSION, InvalidRequest

ROOT = "/pyoverlay/v1/"
TOPOLOGY = ROOT + "topology/"
NETWORKS = TOPOLOGY + "networks/"
ENDPOINTS = TOPOLOGY + "endpoints/"
# Every pool's subnet and ip_range in one key. Claiming a pool compares this key's mod_revision, so
# two hosts carving or claiming overlapping subnets at once cannot both commit: non-overlap is checked
# against a complete, current list. Pool claims are rare, so serialising them costs nothing.
POOLS_INDEX = ROOT + "pools-index"
HOSTS = ROOT + "hosts/"
# hosts-seen/<host_id>: {address, hostname, heartbeat}, no lease: what `pyoverlay status` says of a host
# whose registration expired (its address, when it was last heard from) until forget_host
HOSTS_SEEN = ROOT + "hosts-seen/"
VNIS = ROOT + "vnis/"
POOLS = ROOT + "pools/"
REVISION_PROBE = ROOT + "revision-probe/"  # never written: a range over it reads just the revision
LEFT = ROOT + "left/"  # left/<network_id>/<host_id>: network-first, so deleting a network is one range


def pool_key(pool_id: str) -> str:
    return POOLS + pool_id


def address_prefix(pool_id: str) -> str:
    return f"{ROOT}addresses/{pool_id}/"


def owner_prefix(pool_id: str) -> str:
    return f"{ROOT}owners/{pool_id}/"


def cursor_key(pool_id: str) -> str:
    return f"{ROOT}cursors/{pool_id}"


BLOCKS = ROOT + "blocks/"  # blocks/<pool_id>/<block>: {host_id}; the host that allocates in it
CLAIMS = ROOT + "claims/"  # claims/<pool_id>/<ip>: {owner, host_id, pool_id}: asks a block's holder


def blocks_prefix(pool_id: str) -> str:
    return f"{BLOCKS}{pool_id}/"


def block_key(pool_id: str, block: str) -> str:
    return blocks_prefix(pool_id) + block


def split_block_key(key: str) -> tuple[str, str]:
    """(pool_id, block) of a key under BLOCKS: both are CIDRs, so each holds one '/'."""
    net, plen, block_net, block_plen = key[len(BLOCKS) :].split("/")
    return f"{net}/{plen}", f"{block_net}/{block_plen}"


def claims_prefix(pool_id: str) -> str:
    return f"{CLAIMS}{pool_id}/"


def claim_key(pool_id: str, address: str) -> str:
    return claims_prefix(pool_id) + address


def pool_network_key(pool_id: str) -> str:
    return f"{ROOT}pool-networks/{pool_id}"


def bindings_prefix(host_id: str) -> str:
    return f"{ROOT}bindings/{host_id}/"


def binding_key(host_id: str, docker_network_id: str) -> str:
    return bindings_prefix(host_id) + docker_network_id


def network_hosts_prefix(network_id: str) -> str:
    return f"{ROOT}network-hosts/{network_id}/"


def left_prefix(network_id: str) -> str:
    return f"{LEFT}{network_id}/"


def endpoints_prefix(network_id: str) -> str:
    return f"{ENDPOINTS}{network_id}/"


def endpoint_key(network_id: str, endpoint_id: str) -> str:
    return endpoints_prefix(network_id) + endpoint_id


def endpoint_index_key(endpoint_id: str) -> str:
    return f"{ROOT}endpoint-ids/{endpoint_id}"


def decode(value: str) -> dict[str, Any]:
    return json.loads(value) if value else {}


def load(item: Item) -> dict[str, Any]:
    return decode(item.value)


def dump(record: Any) -> str:
    return json.dumps(record.to_json() if hasattr(record, "to_json") else {"v": SCHEMA_VERSION, **record})


def segment(value: str, what: str) -> str:
    if not value or "/" in value:
        raise InvalidRequest(f"{what} {value!r} must be non-empty and contain no '/'")
    return value
