"""What `pyoverlay status` and `pyoverlay ps` show: the cluster as the store holds it (collected here, as
plain JSON-able dicts) and this host as its agent sees it (asked over the agent's unix socket).
Formatting is in status_text.py, the picture in status_graph.py."""

from __future__ import annotations

import glob
import ipaddress
import os
import socket
import time
from pathlib import Path
from typing import Any

from kvstore import HOST_KIND, Store, StoreError
from kvstore.kv_sqlite import FILE_NAME as SQLITE_FILE

from . import agent_client
from .agent_client import STATUS_PATH
from .metrics import pool_capacity
from .version import version

MANAGED_SOCKETS = "/run/docker/plugins/*/pyoverlay.sock"  # a managed plugin's, under its plugin id
ASK_TIMEOUT = 5.0  # seconds


def datapath_mode(tunnel_mode: str | None = None) -> str:
    """How this host carries the overlay: VXLAN on the underlay, and encrypted networks' VXLAN inside
    WireGuard, the kernel's or wireguard-go ("kernel"/"userspace", HostTunnel.mode)."""
    if tunnel_mode is None:
        return "vxlan"
    return f"vxlan; encrypted networks: vxlan in wireguard-{tunnel_mode}"


def block_count(subnet: str, ip_range: str | None, prefixlen: int) -> int:
    """How many address blocks a pool splits into (0: the pool has none)."""
    if not prefixlen:
        return 0
    return 1 << (prefixlen - ipaddress.ip_network(ip_range or subnet).prefixlen)


def read_host_id(state_dir: str) -> str:
    """This host's id if its agent made one ("" otherwise); never creates it, unlike agent.load_host_id."""
    try:
        return (Path(state_dir) / "host-id").read_text().strip()
    except OSError:
        return ""


def host_labels(records: dict[str, Any]) -> dict[str, str]:
    """host_id -> a name people can tell apart: the hostname, with the address where hosts share one
    (machines cloned from one image often do), else the id."""
    counts: dict[str, int] = {}
    for record in records.values():
        if record is not None and record.hostname:
            counts[record.hostname] = counts.get(record.hostname, 0) + 1
    labels = {}
    for host_id, record in records.items():
        if record is None or not record.hostname:
            labels[host_id] = host_id
        elif counts[record.hostname] > 1:
            labels[host_id] = f"{record.hostname}@{record.address}" if record.address else host_id
        else:
            labels[host_id] = record.hostname
    return labels


def _records(store: Store, extra_ids: set[str]) -> tuple[dict[str, Any], set[str], dict[str, float]]:
    """host_id -> the latest Host record known (alive, else last seen, else None), the alive ids, and
    each host's last heartbeat."""
    alive = {h.host_id: h for h in store.list_hosts()}
    seen = store.hosts_seen()
    records = {h: alive.get(h) or seen.get(h, (None, 0.0))[0] for h in set(alive) | set(seen) | extra_ids}
    return records, set(alive), {h: beat for h, (_, beat) in seen.items()}


def collect_cluster(store: Store, now: float | None = None) -> dict[str, Any]:
    """Every host, network and pool the store knows, in the shape `status --json` prints."""
    now = time.time() if now is None else now
    revision = store.revision()
    endpoints = store.list_endpoints()
    networks = sorted(store.list_networks(), key=lambda n: (n.name, n.network_id))
    pools = {p.pool_id: p for p in store.list_pools()}
    members = {n.network_id: store.network_hosts(n.network_id) for n in networks}
    bound = {h for hosts in members.values() for h in hosts}
    records, alive, heartbeats = _records(store, {e.host_id for e in endpoints} | bound)
    names = host_labels(records)
    hosts = []
    for host_id in sorted(records, key=lambda h: (names[h], h)):
        record, heartbeat = records[host_id], heartbeats.get(host_id, 0.0)
        mine = [e for e in endpoints if e.host_id == host_id]
        hosts.append(
            {
                "id": host_id,
                "name": names[host_id],
                "hostname": record.hostname if record else "",
                "address": record.address if record else "",
                "state": "alive" if host_id in alive else "expired",
                "last_heartbeat": heartbeat or None,
                "heartbeat_age": round(now - heartbeat, 1) if heartbeat else None,
                "networks": [
                    n.name or n.network_id[:12] for n in networks if host_id in members[n.network_id]
                ],
                "endpoints": sum(e.kind != HOST_KIND for e in mine),
            }
        )
    listed = []
    for network in networks:
        theirs = [e for e in endpoints if e.network_id == network.network_id]
        listed.append(
            {
                "id": network.network_id,
                "name": network.name,
                "vni": network.vni,
                "subnets": [s for s in (network.subnet, network.subnet6) if s],
                "hosts": [
                    {"id": h, "name": names.get(h, h), "docker_network_id": d}
                    for h, d in sorted(
                        members[network.network_id].items(), key=lambda m: (names.get(m[0], m[0]), m[0])
                    )
                ],
                "endpoints": sum(e.kind != HOST_KIND for e in theirs),
                "pools": [_pool_use(store, pools[p], names) for p in network.pool_ids if p in pools],
                "encrypted": network.encrypted,
            }
        )
    return {"revision": revision, "hosts": hosts, "networks": listed}


def _pool_use(store: Store, pool: Any, names: dict[str, str]) -> dict[str, Any]:
    reservations = store.reservations(pool.pool_id)
    holders = store.block_holders(pool.pool_id)
    by_host: dict[str, int] = {}
    for holder in holders.values():
        by_host[names.get(holder, holder)] = by_host.get(names.get(holder, holder), 0) + 1
    return {
        "pool": pool.pool_id,
        "ip_range": pool.ip_range,
        "used": len(reservations),  # the gateway and addresses in blocks included: each is reserved
        "total": pool_capacity(pool.subnet),
        "blocks": {
            "prefixlen": pool.block_prefixlen,
            "claimed": len(holders),
            "total": block_count(pool.subnet, pool.ip_range, pool.block_prefixlen),
            "by_host": dict(sorted(by_host.items())),
        },
    }


def collect_endpoints(store: Store, network: str | None = None) -> list[dict[str, Any]]:
    """Every endpoint (of ``network``, by name or id prefix of at least 12 characters), as `ps --json`
    prints them. LookupError naming the networks when ``network`` matches none."""
    networks = {n.network_id: n for n in store.list_networks()}
    wanted = None
    if network is not None:
        wanted = {
            i
            for i, n in networks.items()
            if network in (n.name, i) or (len(network) >= 12 and i.startswith(network))
        }
        if not wanted:
            known = ", ".join(sorted(n.name or i[:12] for i, n in networks.items())) or "none"
            raise LookupError(f"no network {network!r} in the store (networks: {known})")
    endpoints = [e for e in store.list_endpoints() if wanted is None or e.network_id in wanted]
    names = host_labels(_records(store, {e.host_id for e in endpoints})[0])
    listed = []
    for e in endpoints:
        owner = networks.get(e.network_id)
        listed.append(
            {
                "network": owner.name if owner else "",
                "network_id": e.network_id,
                "endpoint_id": e.endpoint_id,
                "kind": e.kind,
                "container": e.container_name,
                "aliases": list(e.aliases),
                "host_id": e.host_id,
                "host": names[e.host_id],
                "ipv4": e.address,
                "ipv6": e.address6,
                "mac": e.mac,
            }
        )
    return sorted(listed, key=lambda x: (x["network"], x["host"], x["container"], x["endpoint_id"]))


def agent_status(agent: Any) -> dict[str, Any]:
    """What the agent (plugin/agent.py's Agent) says of itself: the local part of `pyoverlay status`."""
    settings = agent.settings
    store: dict[str, Any] = (
        {"kind": "etcd", "endpoints": list(settings.etcd_endpoints)}
        if settings.etcd_endpoints
        else {"kind": "embedded", "path": os.path.join(settings.state_dir, SQLITE_FILE)}
    )
    applied = agent.loop.applied_revision
    try:
        revision = agent.store.revision()
        store.update(healthy=True, revision=revision)
    except StoreError as exc:
        revision = None
        store.update(healthy=False, error=str(exc))
    lease = agent.store.lease_of(agent.host_id)
    beat = agent.last_heartbeat
    return {
        "host_id": agent.host_id,
        "hostname": socket.gethostname(),
        "address": agent.vtep,
        "version": version(),
        "store": store,
        "away": agent.host_store.away,  # handing out from its own blocks, journalling (etcd away)
        "refusal": agent.refusal,  # a cloned host id: every request refused
        "lease": {
            "id": lease[0] if lease else None,
            "ttl": lease[1] if lease else settings.host_ttl,
            "renewed_ago": round(time.time() - beat, 1) if beat else None,
        },
        "event_loop": {
            "applied_revision": applied,
            "lag": max(0, revision - applied) if revision is not None else None,
        },
        "datapath": datapath_mode(agent.tunnel.mode),
    }


# -- asking the local agent -------------------------------------------------------------------------
def ask_agent(socket_path: str, timeout: float = ASK_TIMEOUT) -> dict[str, Any]:
    """The agent's own status from its socket; OSError or ValueError when it does not answer so."""
    try:
        return agent_client.call(socket_path, STATUS_PATH, timeout=timeout)
    except agent_client.AgentUnreachable as exc:
        raise OSError(str(exc)) from None
    except RuntimeError as exc:
        raise ValueError(f"{socket_path} answered: {exc}") from None


def agent_sockets(configured: str | None, default: str) -> list[str]:
    """Where this host's agent may listen: the socket named by SOCKET, else the default one and every
    managed plugin's (dockerd puts those under the plugin's id)."""
    if configured:
        return [configured]
    return [p for p in (default, *sorted(glob.glob(MANAGED_SOCKETS))) if os.path.exists(p)]


def local_status(sockets: list[str], host_id: str) -> dict[str, Any]:
    """The first answer from ``sockets`` of the agent holding ``host_id`` (any agent when unknown),
    else {"error": …} saying which sockets were tried."""
    errors = []
    answers = []
    for path in sockets:
        try:
            answer = ask_agent(path)
        except (OSError, ValueError) as exc:
            errors.append(f"{path}: {exc}")
            continue
        if not host_id or answer.get("host_id") == host_id:
            return {**answer, "socket": path}
        answers.append({**answer, "socket": path})
    if answers:  # an agent of another state directory: better than nothing, and it says whose
        return answers[0]
    tried = "; ".join(errors) if errors else "no agent socket found"
    return {"error": f"agent not answering ({tried})"}
