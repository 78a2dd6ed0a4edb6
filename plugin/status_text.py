"""`pyoverlay status` and `pyoverlay ps` as text for a terminal: pure functions of what plugin/status.py
collected (the same dicts `--json` prints)."""

from __future__ import annotations

from typing import Any


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def format_local(local: dict[str, Any]) -> list[str]:
    if "error" in local:
        return ["This host", f"  {local['error']}"]
    store = local["store"]
    where = ",".join(store["endpoints"]) if store["kind"] == "etcd" else store["path"]
    health = (
        f"ok, revision {store['revision']}" if store.get("healthy") else f"unreachable: {store.get('error')}"
    )
    lease = local["lease"]
    loop = local["event_loop"]
    lag = "unknown (store unreachable)" if loop["lag"] is None else str(loop["lag"])
    lines = [
        "This host",
        f"  id          {local['host_id']} ({local['hostname']})",
        f"  address     {local['address']}",
        f"  version     {local['version']}",
        f"  store       {store['kind']} {where}: {health}"
        + ("; working offline" if local.get("away") else ""),
        f"  lease       {lease['id'] if lease['id'] is not None else 'none'}, ttl {lease['ttl']}s, "
        f"renewed {_age(lease['renewed_ago'])}",
        f"  event loop  applied revision {loop['applied_revision']}, lag {lag}",
        f"  datapath    {local['datapath']}",
    ]
    if local.get("refusal"):
        lines.append(f"  REFUSING REQUESTS: {local['refusal']}")
    return lines


def _pool_use(pool: dict[str, Any]) -> str:
    used = f"{pool['used']}/{pool['total']}"
    blocks = pool["blocks"]
    if blocks["prefixlen"]:
        used += f" (blocks /{blocks['prefixlen']}: {blocks['claimed']}/{blocks['total']})"
    return used


def format_status(cluster: dict[str, Any] | None, local: dict[str, Any], store_error: str = "") -> str:
    """The whole of `pyoverlay status`: this host, then (when the store answered) hosts and networks."""
    lines = format_local(local)
    if cluster is None:
        return "\n".join([*lines, "", f"Cluster: store not read: {store_error}"]) + "\n"
    this = local.get("host_id")
    lines += ["", f"Hosts (store revision {cluster['revision']})"]
    host_rows = [
        [
            ("* " if h["id"] == this else "  ") + h["id"],
            h["name"],
            h["state"],
            h["address"] or "-",
            _age(h["heartbeat_age"]),
            ",".join(h["networks"]) or "-",
            str(h["endpoints"]),
        ]
        for h in cluster["hosts"]
    ]
    headers = ["  HOST", "NAME", "STATE", "ADDRESS", "HEARTBEAT", "NETWORKS", "ENDPOINTS"]
    lines += ["  " + line for line in _table(headers, host_rows)]
    lines += ["", "Networks"]
    network_rows = []
    for n in cluster["networks"]:
        pools = n["pools"] or [None]
        for i, pool in enumerate(pools):
            first = i == 0
            network_rows.append(
                [
                    (n["name"] or n["id"][:12]) if first else "",
                    str(n["vni"]) if first else "",
                    (pool["pool"] if pool else ",".join(n["subnets"]) or "-"),
                    ",".join(h["name"] for h in n["hosts"]) or "-" if first else "",
                    str(n["endpoints"]) if first else "",
                    _pool_use(pool) if pool else "- (Docker's IPAM)",
                    ("yes" if n["encrypted"] else "no") if first else "",
                ]
            )
    headers = ["NETWORK", "VNI", "SUBNET", "HOSTS", "ENDPOINTS", "POOL USE", "ENCRYPTED"]
    lines += ["  " + line for line in _table(headers, network_rows)] if network_rows else ["  none"]
    return "\n".join(lines) + "\n"


def format_ps(endpoints: list[dict[str, Any]]) -> str:
    """`pyoverlay ps`: one line per endpoint; a host's own address (expose) shows as <host>."""
    rows = [
        [
            e["network"] or e["network_id"][:12],
            e["container"] or ("<host>" if e["kind"] == "host" else e["endpoint_id"][:12]),
            e["host"],
            e["ipv4"] or "-",
            e["ipv6"] or "-",
            e["mac"],
        ]
        for e in endpoints
    ]
    return "\n".join(_table(["NETWORK", "CONTAINER", "HOST", "IPV4", "IPV6", "MAC"], rows)) + "\n"
