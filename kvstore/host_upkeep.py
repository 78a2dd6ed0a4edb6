"""A host's upkeep of what lets it work while the store is away (HostStore's half run by the agent's
block keeper thread, online): copies of the networks bound here, a spare address block in each of their
pools, blocks long empty given back, and addresses this host reserved that no endpoint holds freed."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from . import blocks
from .model import GATEWAY_OWNER, Network, NotFound

if TYPE_CHECKING:
    from .host_blocks import HostBlocks
    from .offline import OfflineState
    from .store import Store

log = logging.getLogger(__name__)

BLOCK_IDLE = 600.0  # seconds a block stays empty before the host gives it back (its spare excepted)
# seconds an address this host reserved may stay without an endpoint holding it before it is freed: more
# than Docker's 30 s of retries between RequestAddress and CreateEndpoint, and after a lost release
ORPHAN_AFTER = 60.0


class HostUpkeep:
    store: Store
    host_id: str
    offline: OfflineState
    blocks: HostBlocks
    _orphans: dict[tuple[str, str, str], float]

    def reload_blocks(self, pool_id: str | None = None) -> None:
        """Take the blocks this host holds, and their reserved addresses, from the store again; the
        journal's reservations not yet published stay marked."""
        since = self.blocks.since()  # marks made while this lists stay
        held = self._call(self.store.host_blocks, self.host_id)
        for pool in [pool_id] if pool_id else sorted(set(held) | set(self.blocks.pool_ids())):
            mine = held.get(pool, {})
            taken = self._call(self.store.list_addresses, pool) if mine else {}
            for _, op in self.offline.journal():
                if op["op"] == "reserve" and op["pool_id"] == pool:
                    taken[op["address"]] = op["owner"]
            self.blocks.replace(pool, mine, taken, since)

    def keep(self) -> None:
        """Get ready for the store going away (online only): copy the networks bound here and their
        pools, keep a spare block's worth of free addresses in each pool (so that containers can start
        meanwhile), and give back blocks long empty."""
        self.wanted.clear()
        pool_ids: set[str] = set()
        bindings = self._call(self.store.bindings, self.host_id)
        seen: set[tuple[str, str, str]] = set()
        for docker_network_id, network_id in bindings.items():
            with contextlib.suppress(NotFound):  # deleted on another host: this host's delete drops it
                network = self._call(self.store.get_network, network_id)
                self.offline.put("networks/" + docker_network_id, network.to_json())
                pool_ids.update(network.pool_ids)
                seen |= self._free_orphans(network)
        self._orphans = {k: v for k, v in self._orphans.items() if k in seen}
        for key, _ in self.offline.items("networks/"):
            if key[len("networks/") :] not in bindings:
                self.offline.delete(key)
        for pool_id in set(self.blocks.pool_ids()) - pool_ids:  # left meanwhile (a claim racing a leave)
            self.release_pool_blocks(pool_id)
        for pool_id in sorted(pool_ids):
            pool = self.get_pool(pool_id, fresh=True)
            if not pool.block_prefixlen:
                continue
            if not self.offline.pending:  # marks of addresses granted elsewhere and released since go
                self.reload_blocks(pool_id)
            size = blocks.block_size(pool.subnet, pool.block_prefixlen)
            while self.blocks.spare(pool) < size:
                if not self._claim(pool):
                    break  # no free block: borrowing remains
            for block, revision in self.blocks.idle_blocks(pool, BLOCK_IDLE):
                self.blocks.drop_block(pool_id, block)
                self._call(self.store.release_block, pool_id, block, revision)
                log.info("gave back block %s of pool %s (empty for %.0f s)", block, pool_id, BLOCK_IDLE)

    def _free_orphans(self, network: Network) -> set[tuple[str, str, str]]:
        """Free addresses of the network this host reserved that no endpoint has held for ORPHAN_AFTER:
        a RequestAddress whose CreateEndpoint never came, a ReleaseAddress lost with an agent killed
        before it read it. Returns the orphans still waiting."""
        held = {ip for e in self._call(self.store.list_endpoints, network.network_id) for ip in (e.ip, e.ip6)}
        now, waiting = time.monotonic(), set()
        for pool_id in network.pool_ids:
            for address, (owner, host_id) in self._call(self.store.reservations, pool_id).items():
                if host_id != self.host_id or owner == GATEWAY_OWNER or address in held:
                    continue
                key = (pool_id, address, owner)
                if now - self._orphans.setdefault(key, now) < ORPHAN_AFTER:
                    waiting.add(key)
                    continue
                self._call(self.store.release_address, pool_id, address, only_owner=owner)
                self.blocks.free(pool_id, address, owner)
                log.warning("freed %s of pool %s: held by %s, and by no endpoint for %.0f s", address,
                            pool_id, owner, ORPHAN_AFTER)  # fmt: skip
        return waiting
