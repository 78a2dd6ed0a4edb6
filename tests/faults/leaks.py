"""What a lab holds after a fault run, checked against Docker's and the kernel's own listings: every
endpoint, address and device must belong to a container Docker still has; nothing else may remain."""

from __future__ import annotations

import base64
import ipaddress
import json
import time

from tests.lab.system import wait_until

ROOT = "/pyoverlay/v1/"


def store_items(lab, prefix: str = ROOT) -> dict[str, dict]:
    """key -> decoded JSON value of every key under ``prefix`` in the lab's etcd."""
    out = lab.etcdctl("get", "--prefix", prefix, "-w", "json").stdout
    kvs = json.loads(out).get("kvs", [])
    items = {}
    for kv in kvs:
        key = base64.b64decode(kv["key"]).decode()
        value = base64.b64decode(kv.get("value", "")).decode()
        items[key] = json.loads(value) if value else {}
    return items


def docker_endpoints(h) -> dict[str, dict]:
    """EndpointID -> {container, ipv4, ipv6, mac, network} of every pyoverlay endpoint Docker has on h."""
    names = h.docker("network", "ls", "--filter", "driver=pyoverlay", "--format", "{{.Name}}").stdout.split()
    found: dict[str, dict] = {}
    if not names:
        return found
    for net in json.loads(h.docker("network", "inspect", *names).stdout):
        for cid, c in (net.get("Containers") or {}).items():
            found[c["EndpointID"]] = {
                "container": cid,
                "name": c.get("Name", ""),
                "ipv4": (c.get("IPv4Address") or "").split("/")[0] or None,
                "ipv6": (c.get("IPv6Address") or "").split("/")[0] or None,
                "mac": c.get("MacAddress", ""),
                "network": net["Name"],
            }
    return found


def kernel_ports(h) -> dict[str, set[str]]:
    """Per network namespace on h: the veth ports on its bridge (poh*), retired pairs excluded."""
    ports = {}
    for path in h.network_namespaces():
        out = h.run(["nsenter", f"--net={path}", "ip", "-br", "link"]).stdout
        names = {line.split()[0].split("@")[0] for line in out.splitlines()}
        ports[path] = {n for n in names if n.startswith("poh")}
    return ports


def host_leftovers(h) -> list[str]:
    """Container-side veths (poc*) left in h's own namespace, and FORWARD rules naming pyoverlay."""
    out = h.run(["ip", "-br", "link"]).stdout
    links = [line.split()[0].split("@")[0] for line in out.splitlines()]
    rules = h.run(["iptables", "-w", "-S", "FORWARD"], check=False).stdout.splitlines()
    return [f"link {n}" for n in links if n.startswith("poc")] + [
        f"rule {r}" for r in rules if "pyoverlay" in r or "pobr" in r
    ]


def audit(lab) -> dict[str, list[str]]:
    """Every mismatch between the store, Docker and the kernels; empty lists when nothing leaked."""
    docker = {}
    for h in lab.hosts:
        docker.update({eid: {**e, "host": h.name} for eid, e in docker_endpoints(h).items()})
    items = store_items(lab)
    endpoints = {
        k.rsplit("/", 1)[1]: v for k, v in items.items() if k.startswith(ROOT + "topology/endpoints/")
    }
    containers = {eid: e for eid, e in endpoints.items() if e.get("kind", "container") == "container"}
    problems: dict[str, list[str]] = {"endpoints": [], "addresses": [], "devices": [], "host": []}
    for eid in containers.keys() - docker.keys():
        problems["endpoints"].append(f"store has endpoint {eid[:12]} that no daemon has")
    for eid in docker.keys() - containers.keys():
        problems["endpoints"].append(f"{docker[eid]['host']} has endpoint {eid[:12]} the store lacks")
    held = {e["ipv4"] for e in docker.values() if e["ipv4"]} | {
        e["ipv6"] for e in docker.values() if e["ipv6"]
    }
    held |= {
        str(ipaddress.ip_interface(e[f]).ip)
        for e in endpoints.values()
        for f in ("address", "address6")
        if e.get(f)
    }
    for key, value in items.items():
        if not key.startswith(ROOT + "addresses/"):
            continue
        ip = key.rsplit("/", 1)[1]
        if value.get("owner") != "gateway" and ip not in held:
            problems["addresses"].append(f"{ip} reserved for {value.get('owner')} but held by nothing")
    addresses = [e["ipv4"] for e in docker.values() if e["ipv4"]]
    if len(addresses) != len(set(addresses)):
        dupes = sorted({a for a in addresses if addresses.count(a) > 1})
        problems["addresses"].append(f"duplicate addresses among containers: {dupes}")
    for h in lab.hosts:
        local = {"poh" + eid[:12] for eid, e in docker.items() if e["host"] == h.name}
        ports = set().union(set(), *kernel_ports(h).values())
        if ports != local:
            problems["devices"].append(
                f"{h.name}: bridge ports without an endpoint {sorted(ports - local)}, "
                f"endpoints without a port {sorted(local - ports)}"
            )
        problems["host"] += [f"{h.name}: {x}" for x in host_leftovers(h)]
    return problems


def assert_no_leaks(lab, timeout: float = 20.0) -> dict[str, list[str]]:
    """Wait until the audit is clean (agents converge asynchronously), else fail with what remains."""
    last: dict[str, list[str]] = {}

    def clean() -> bool:
        nonlocal last
        try:
            current = audit(lab)
        except Exception as exc:  # noqa: BLE001 - a listing that hung, or a network removed between
            # `ls` and `inspect`, is no finding: look again (it is reported if the audit never comes clean)
            last = {**last, "audit errors": [*last.get("audit errors", [])[-2:], repr(exc)[:300]]}
            return False
        last = current
        return not any(last.values())

    start = time.monotonic()
    try:
        wait_until(clean, timeout, "no leaks")
    except Exception as exc:  # noqa: BLE001 - report what leaked
        raise AssertionError(f"leaks after {time.monotonic() - start:.1f} s: {last}") from exc
    return last
