"""`pyoverlay status --graph FILE`: hosts, networks and containers with their addresses, laid out by
Graphviz (`dot`, through the `graphviz` package: pip install 'pyoverlay[graph]', apt-get install graphviz).

Each host is a cluster box holding its containers; each network is a node outside the hosts, and every
container has an edge to its network labelled with its addresses. Pure up to the render call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FORMATS = ("svg", "png")
# one colour per network, cycling: edges and the network's node share it
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


class GraphUnavailable(Exception):
    """The graphviz package or Graphviz's `dot` is missing."""


def build(cluster: dict[str, Any], endpoints: list[dict[str, Any]], this_host: str = "") -> Any:
    """The graphviz.Graph of the cluster (not rendered)."""
    try:
        import graphviz
    except ImportError:
        raise GraphUnavailable(
            "--graph needs the graphviz package: pip install 'pyoverlay[graph]' (and Graphviz's dot)"
        ) from None
    graph = graphviz.Graph(
        "pyoverlay", graph_attr={"rankdir": "LR", "fontname": "Helvetica", "compound": "true"}
    )
    graph.attr("node", fontname="Helvetica", fontsize="10")
    graph.attr("edge", fontname="Helvetica", fontsize="9")
    containers = {_container(e): _name(e) for e in endpoints}
    colours = {n["id"]: PALETTE[i % len(PALETTE)] for i, n in enumerate(cluster["networks"])}
    for n in cluster["networks"]:
        label = f"{n['name'] or n['id'][:12]}\\n{', '.join(n['subnets'])}\\nVNI {n['vni']}"
        if n["encrypted"]:
            label += "\\nencrypted"
        graph.node(f"net-{n['id']}", label, shape="ellipse", style="filled", fillcolor="white",
                   color=colours[n["id"]], penwidth="2")  # fmt: skip
    for h in cluster["hosts"]:
        with graph.subgraph(name=f"cluster_{h['id']}") as box:
            mark = " (this host)" if h["id"] == this_host else ""
            where = "" if h["address"] and h["address"] in h["name"] else f"{h['address'] or '?'} · "
            fill = "#f4f4f4" if h["state"] == "alive" else "#fde0dc"  # an expired host stands out
            box.attr(label=f"{h['name']}{mark}\\n{where}{h['state']}",
                     style="rounded,filled", fillcolor=fill)  # fmt: skip
            box.node(f"host-{h['id']}", "VXLAN\\n" + (h["address"] or "?"), shape="box", style="dashed")
            for node, name in containers.items():
                if node.startswith(f"ctr-{h['id']}-"):
                    box.node(node, name, shape="box", style="filled", fillcolor="white")
    for e in endpoints:  # one edge per endpoint: a container on two networks has two
        label = "\\n".join(a for a in (e["ipv4"], e["ipv6"], e["mac"]) if a)
        colour = colours.get(e["network_id"], "black")
        graph.edge(_container(e), f"net-{e['network_id']}", label=label, color=colour, fontcolor=colour)
    for n in cluster["networks"]:
        for member in n["hosts"]:  # a host carrying the network: its VXLAN device, dotted
            graph.edge(f"host-{member['id']}", f"net-{n['id']}", style="dotted", color=colours[n["id"]])
    return graph


def _name(endpoint: dict[str, Any]) -> str:
    return endpoint["container"] or ("(host)" if endpoint["kind"] == "host" else endpoint["endpoint_id"][:12])


def _container(endpoint: dict[str, Any]) -> str:
    """The node of the endpoint's container: one per container and host, whatever its networks."""
    return f"ctr-{endpoint['host_id']}-{_name(endpoint)}"


def draw(cluster: dict[str, Any], endpoints: list[dict[str, Any]], path: str, this_host: str = "") -> str:
    """Render to ``path`` (.svg or .png); returns the path written. ValueError for another suffix."""
    target = Path(path)
    fmt = target.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"--graph {path}: the file must end in .svg or .png")
    graph = build(cluster, endpoints, this_host)
    import graphviz

    try:
        data = graph.pipe(format=fmt, engine="dot")
    except graphviz.ExecutableNotFound:
        raise GraphUnavailable("--graph needs Graphviz's dot: apt-get install graphviz") from None
    target.write_bytes(data)
    return str(target)
