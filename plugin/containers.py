"""What Docker sync reads of this host's containers (pure: the daemon's JSON in, records out):
the names of each pyoverlay endpoint, and the addresses each container may ask questions from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GATEWAY_BRIDGE = "docker_gwbridge"  # where containers of a network without a gateway get their default route


@dataclass(frozen=True)
class Attached:
    """A container's endpoint on one of our networks, with the names Docker's own DNS gives it there."""

    endpoint_id: str
    container_id: str
    name: str
    aliases: tuple[str, ...]


def attached_endpoints(summaries: Iterable[Mapping[str, Any]], ours: set[str]) -> dict[str, Attached]:
    """endpoint_id -> Attached for every endpoint on a network in ``ours`` (Docker network ids), from the
    daemon's container list (GET /containers/json)."""
    found: dict[str, Attached] = {}
    for summary in summaries:
        names = summary.get("Names") or []
        name = names[0].lstrip("/") if names else ""
        for settings in _networks(summary).values():
            endpoint_id = settings.get("EndpointID") or ""
            if not endpoint_id or settings.get("NetworkID") not in ours:
                continue
            found[endpoint_id] = Attached(endpoint_id, summary.get("Id", ""), name, _aliases(name, settings))
    return found


def inspected_aliases(inspect: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """endpoint_id -> aliases, from GET /containers/{id}/json (the list leaves Aliases out)."""
    name = (inspect.get("Name") or "").lstrip("/")
    found = {}
    for settings in ((inspect.get("NetworkSettings") or {}).get("Networks") or {}).values():
        if settings.get("EndpointID"):
            found[settings["EndpointID"]] = _aliases(name, settings)
    return found


def _aliases(name: str, settings: Mapping[str, Any]) -> tuple[str, ...]:
    # Docker ≥ 25 lists every name it resolves in DNSNames (name, aliases, short id); older ones, Aliases
    names = settings.get("DNSNames") or settings.get("Aliases") or []
    return tuple(dict.fromkeys(n for n in names if n and n != name))


def container_addresses(
    summaries: Iterable[Mapping[str, Any]], gateway_bridge: Mapping[str, Any] | None
) -> dict[str, str]:
    """address -> container id, for every IPv4 address of every container here: those of its networks
    and its docker_gwbridge one (not among its networks in Docker's answers)."""
    found: dict[str, str] = {}
    for summary in summaries:
        for settings in _networks(summary).values():
            if settings.get("IPAddress"):
                found[settings["IPAddress"]] = summary.get("Id", "")
    containers = (gateway_bridge or {}).get("Containers") or {}
    for container_id, info in containers.items():
        address = (info.get("IPv4Address") or "").split("/")[0]
        if address:
            found[address] = container_id
    return found


def _networks(summary: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    return (summary.get("NetworkSettings") or {}).get("Networks") or {}
