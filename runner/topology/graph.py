"""The topology as a diagram: Mermaid flowchart or Graphviz DOT.

`diagram(topology)` turns the topology into plain nodes and edges once;
`mermaid()` and `dot()` render them. Solid edges carry messages (exchange ->
binding -> queue / topic / exchange, queue -> consumer, topic -> group);
dashed edges are the fallbacks (alternate exchange, dead-letter exchange,
a dlq_policy's dead-letter queue). Node ids are derived from the kind and the
name with every character outside `[A-Za-z0-9_]` replaced, plus a counter on a
clash, so names with dots and dashes are safe in both languages.

What `runner graph` draws of a large topology (one entity's neighbourhood,
fallback edges merged into junctions, clusters) is chosen in `graph_view`;
the renderers here draw any `Diagram`, with its clusters and a legend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from runner.topology.model import Binding, ExchangeType, Topology

NodeKind = Literal["exchange", "queue", "topic", "consumer", "group", "junction"]
Format = Literal["mermaid", "dot"]
FORMATS: tuple[Format, ...] = ("mermaid", "dot")


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    kind: NodeKind
    label: str
    name: str = ""  # the entity's declared name (the label adds details)


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    label: str = ""
    dashed: bool = False


@dataclass(frozen=True, slots=True)
class Cluster:
    """Nodes drawn in one box (a Mermaid subgraph, a DOT `cluster_` subgraph)."""

    id: str
    label: str
    node_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Diagram:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    clusters: tuple[Cluster, ...] = ()


_PREFIX = {"exchange": "ex", "queue": "q", "topic": "t", "consumer": "c", "group": "g",
           "junction": "j"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def binding_label(b: Binding, kind: ExchangeType | None) -> str:
    """What a binding matches, in a few words."""
    if kind is ExchangeType.FANOUT:
        return ""
    if kind is ExchangeType.HEADERS or b.headers:
        pairs = ", ".join(f"{k}={v}" for k, v in b.headers)
        return f"{b.match.value}: {pairs}" if pairs else b.match.value
    return b.routing_key


def diagram(topology: Topology) -> Diagram:
    """Nodes and edges of `topology` (references to unknown names are left out)."""
    ids: dict[tuple[str, str], str] = {}
    taken: set[str] = set()
    nodes: list[Node] = []

    def add(kind: NodeKind, name: str, label: str) -> None:
        base = f"{_PREFIX[kind]}_{_UNSAFE.sub('_', name)}"
        node_id, n = base, 1
        while node_id in taken:
            n += 1
            node_id = f"{base}_{n}"
        taken.add(node_id)
        ids[(kind, name)] = node_id
        nodes.append(Node(node_id, kind, label, name))

    exchanges = topology.exchange_map()
    queues = topology.queue_map()
    topics = topology.topic_map()
    for name, ex in topology.exchanges:
        add("exchange", name, f"{name} ({ex.type.value}{', internal' if ex.internal else ''})")
    for name, q in topology.queues:
        add("queue", name, name if q.max_priority is None else f"{name} (priority)")
    for name, t in topology.topics:
        parts = "partition" if t.partitions == 1 else "partitions"
        add("topic", name, f"{name} ({t.partitions} {parts})")
    for name, g in topology.consumer_groups:
        extra = f" x{g.instances}" if g.handler else " (external)"
        add("group", name, name + extra)
    for name, c in topology.consumers:
        add("consumer", name, name if c.concurrency == 1 else f"{name} x{c.concurrency}")

    edges: list[Edge] = []

    def link(
        src: tuple[str, str], dst: tuple[str, str], label: str = "", dashed: bool = False
    ) -> None:
        if src in ids and dst in ids:
            edges.append(Edge(ids[src], ids[dst], label, dashed))

    for b in topology.bindings:
        source = exchanges.get(b.exchange)
        label = binding_label(b, source.type if source else None)
        link(("exchange", b.exchange), (b.destination_kind, b.destination), label)
    for name, ex in topology.exchanges:
        if ex.alternate_exchange:
            link(("exchange", name), ("exchange", ex.alternate_exchange), "alternate", True)
    for name, q in topology.queues:
        if q.dead_letter:
            key = q.dead_letter.routing_key
            label = "dead letter" + (f": {key}" if key else "")
            link(("queue", name), ("exchange", q.dead_letter.exchange), label, True)
    policies = topology.policy_map()
    for name, c in topology.consumers:
        link(("queue", c.queue), ("consumer", name))
    for name, g in topology.consumer_groups:
        for topic_name in g.topics:
            link(("topic", topic_name), ("group", name))
    readers = [("consumer", n, c.dlq_policy) for n, c in topology.consumers]
    readers += [("group", n, g.dlq_policy) for n, g in topology.consumer_groups]
    for kind, name, policy_name in readers:
        policy = policies.get(policy_name) if policy_name else None
        dlq = policy.dead_letter_queue if policy else None
        if dlq is not None:
            target = ("queue", dlq) if dlq in queues else ("topic", dlq) if dlq in topics else None
            if target is not None:
                link((kind, name), target, f"dlq: {policy_name}", True)
    return Diagram(tuple(nodes), tuple(edges))


# ---------------------------------------------------------------- Mermaid

_MERMAID_SHAPES = {
    "exchange": ('{{"', '"}}'),
    "queue": ('[("', '")]'),
    "topic": ('[["', '"]]'),
    "consumer": ('(["', '"])'),
    "group": ('[/"', '"/]'),  # a parallelogram: not a consumer's stadium (dot: doubleoctagon)
    "junction": ('(("', '"))'),
}

# one example node per kind, and what the two kinds of edges mean
LEGEND_KINDS: tuple[tuple[NodeKind, str], ...] = (
    ("exchange", "exchange"), ("queue", "queue"), ("topic", "topic"),
    ("consumer", "consumer"), ("group", "consumer group"),
)
LEGEND_SOLID = "messages"
LEGEND_DASHED = "fallback: alternate, dead letter, dlq"


def _mermaid_text(text: str) -> str:
    # Mermaid entity codes: `#` first, so the codes we write stay intact.
    return text.replace("#", "#35;").replace('"', "#quot;")


def _mermaid_node(n: Node, indent: str) -> str:
    left, right = _MERMAID_SHAPES[n.kind]
    return f"{indent}{n.id}{left}{_mermaid_text(n.label)}{right}"


def mermaid(topology: Topology) -> str:
    """A Mermaid flowchart (left to right) of `topology`."""
    return mermaid_of(diagram(topology))


def mermaid_of(d: Diagram, *, legend: bool = False) -> str:
    """A Mermaid flowchart of a diagram: clusters as subgraphs, then the edges."""
    lines = ["flowchart LR"]
    boxed = {node_id for c in d.clusters for node_id in c.node_ids}
    by_id = {n.id: n for n in d.nodes}
    for n in d.nodes:
        if n.id not in boxed:
            lines.append(_mermaid_node(n, "    "))
    for c in d.clusters:
        lines.append(f'    subgraph {c.id} ["{_mermaid_text(c.label)}"]')
        lines += [_mermaid_node(by_id[i], "        ") for i in c.node_ids]
        lines.append("    end")
    junctions = {n.id for n in d.nodes if n.kind == "junction"}
    for e in d.edges:
        arrow = "-.->" if e.dashed else "-->"
        # a junction shows its label itself (Mermaid has no point shape)
        text = "" if e.source in junctions else e.label
        label = f'|"{_mermaid_text(text)}"|' if text else ""
        lines.append(f"    {e.source} {arrow}{label} {e.target}")
    if legend:
        lines.append('    subgraph legend ["legend"]')
        for kind, text in LEGEND_KINDS:
            lines.append(_mermaid_node(Node(f"legend_{kind}", kind, text), "        "))
        lines.append(f'        legend_exchange -->|"{LEGEND_SOLID}"| legend_queue')
        lines.append(f'        legend_consumer -.->|"{LEGEND_DASHED}"| legend_group')
        lines.append("    end")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- Graphviz

_DOT_SHAPES = {
    "exchange": "hexagon",
    "queue": "cylinder",
    "topic": "box3d",
    "consumer": "ellipse",
    "group": "doubleoctagon",
    "junction": "point",
}


def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_edge(e: Edge, indent: str) -> str:
    attrs = []
    if e.label:
        attrs.append(f"label={_dot_text(e.label)}")
    if e.dashed:
        attrs.append("style=dashed")
    suffix = f" [{', '.join(attrs)}]" if attrs else ""
    return f"{indent}{e.source} -> {e.target}{suffix};"


def dot(topology: Topology) -> str:
    """A Graphviz DOT digraph (left to right) of `topology`."""
    return dot_of(diagram(topology), title=topology.name or "topology")


def dot_of(d: Diagram, *, title: str = "topology", legend: bool = False) -> str:
    """A Graphviz DOT digraph of a diagram: clusters as `cluster_` subgraphs."""
    lines = [f"digraph {_dot_text(title)} {{", "    rankdir=LR;"]
    for n in d.nodes:
        label = "" if n.kind == "junction" else f"label={_dot_text(n.label)}, "
        lines.append(f"    {n.id} [{label}shape={_DOT_SHAPES[n.kind]}];")
    for c in d.clusters:
        lines.append(f"    subgraph cluster_{c.id} {{")
        lines.append(f"        label={_dot_text(c.label)}; style=rounded;")
        lines.append(f"        {'; '.join(c.node_ids)};")
        lines.append("    }")
    for e in d.edges:
        lines.append(_dot_edge(e, "    "))
    if legend:
        lines.append("    subgraph cluster_legend {")
        lines.append('        label="legend"; style=rounded;')
        for kind, text in LEGEND_KINDS:
            lines.append(f"        legend_{kind} [label={_dot_text(text)}, "
                         f"shape={_DOT_SHAPES[kind]}];")
        lines.append(_dot_edge(Edge("legend_exchange", "legend_queue", LEGEND_SOLID),
                               "        "))
        lines.append(_dot_edge(Edge("legend_consumer", "legend_group", LEGEND_DASHED, True),
                               "        "))
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(topology: Topology, fmt: Format = "mermaid") -> str:
    """`topology` as a diagram in `fmt` ("mermaid" or "dot")."""
    return dot(topology) if fmt == "dot" else mermaid(topology)
