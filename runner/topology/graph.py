"""The topology as a diagram: Mermaid flowchart or Graphviz DOT.

`diagram(topology)` turns the topology into plain nodes and edges once;
`mermaid()` and `dot()` render them. Solid edges carry messages (exchange ->
binding -> queue / topic / exchange, queue -> consumer, topic -> group);
dashed edges are the fallbacks (alternate exchange, dead-letter exchange,
a dlq_policy's dead-letter queue). Node ids are derived from the kind and the
name with every character outside `[A-Za-z0-9_]` replaced, plus a counter on a
clash, so names with dots and dashes are safe in both languages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from runner.topology.model import Binding, ExchangeType, Topology

NodeKind = Literal["exchange", "queue", "topic", "consumer", "group"]
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
class Diagram:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]


_PREFIX = {"exchange": "ex", "queue": "q", "topic": "t", "consumer": "c", "group": "g"}
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
    "group": ('(["', '"])'),
}


def _mermaid_text(text: str) -> str:
    # Mermaid entity codes: `#` first, so the codes we write stay intact.
    return text.replace("#", "#35;").replace('"', "#quot;")


def mermaid(topology: Topology) -> str:
    """A Mermaid flowchart (left to right) of `topology`."""
    d = diagram(topology)
    lines = ["flowchart LR"]
    for n in d.nodes:
        left, right = _MERMAID_SHAPES[n.kind]
        lines.append(f"    {n.id}{left}{_mermaid_text(n.label)}{right}")
    for e in d.edges:
        arrow = "-.->" if e.dashed else "-->"
        label = f'|"{_mermaid_text(e.label)}"|' if e.label else ""
        lines.append(f"    {e.source} {arrow}{label} {e.target}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- Graphviz

_DOT_SHAPES = {
    "exchange": "hexagon",
    "queue": "cylinder",
    "topic": "box3d",
    "consumer": "ellipse",
    "group": "doubleoctagon",
}


def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot(topology: Topology) -> str:
    """A Graphviz DOT digraph (left to right) of `topology`."""
    d = diagram(topology)
    title = topology.name or "topology"
    lines = [f"digraph {_dot_text(title)} {{", "    rankdir=LR;"]
    for n in d.nodes:
        lines.append(f"    {n.id} [label={_dot_text(n.label)}, shape={_DOT_SHAPES[n.kind]}];")
    for e in d.edges:
        attrs = []
        if e.label:
            attrs.append(f"label={_dot_text(e.label)}")
        if e.dashed:
            attrs.append("style=dashed")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"    {e.source} -> {e.target}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(topology: Topology, fmt: Format = "mermaid") -> str:
    """`topology` as a diagram in `fmt` ("mermaid" or "dot")."""
    return dot(topology) if fmt == "dot" else mermaid(topology)
