"""What `runner graph` draws of a topology: one entity's neighbourhood, merged fallback
edges, clusters.

A topology of 50+ entities drawn whole is a tangle, mostly of dashed
fallback edges. Three steps, each a function from `Diagram` to `Diagram`:

- `neighbourhood(d, name)` (`--only NAME`): the entity and every node on a
  path through it: what feeds it (upstream, transitively) and where its
  messages go (downstream, dead letters included);
- `merge_fallbacks(d)`: dashed edges of the same kind into the same target
  (queues dead-lettering into one exchange, consumers sharing a dlq_policy's
  queue) meet in one junction, and the label is written once, on the
  junction's edge to the target (a dead-letter routing key stays on its
  queue's edge);
- `cluster(d, by)` (`--cluster kind|prefix`): boxes per kind, or per name
  prefix (the name up to its first `.`, `-` or `_`; a prefix shared by at
  least two entities).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Literal

from runner.topology.graph import Cluster, Diagram, Edge, Node
from runner.topology.suggest import did_you_mean

ClusterBy = Literal["none", "kind", "prefix"]
CLUSTER_BY: tuple[ClusterBy, ...] = ("none", "kind", "prefix")
_KIND_TITLES = {"exchange": "exchanges", "queue": "queues", "topic": "topics",
                "consumer": "consumers and groups", "group": "consumers and groups"}
_DEAD_LETTER = "dead letter"
_SEPARATOR = re.compile(r"[.\-_]")


class UnknownEntity(ValueError):
    """`--only NAME` names nothing in the topology (the message suggests the closest)."""


@dataclass(frozen=True, slots=True)
class View:
    only: str | None = None
    merge: bool = True
    cluster: ClusterBy = "none"


def build(d: Diagram, view: View) -> Diagram:
    """`d` as `view` asks: the neighbourhood first, then merged edges, then clusters."""
    if view.only is not None:
        d = neighbourhood(d, view.only)
    if view.merge:
        d = merge_fallbacks(d)
    if view.cluster != "none":
        d = cluster(d, view.cluster)
    return d


def neighbourhood(d: Diagram, name: str) -> Diagram:
    """The nodes named `name` and every node upstream or downstream of them."""
    start = {n.id for n in d.nodes if n.name == name and n.kind != "junction"}
    if not start:
        names = sorted({n.name for n in d.nodes if n.name})
        raise UnknownEntity(f"no exchange, queue, topic, consumer or group is named "
                            f"{name!r}{did_you_mean(name, names)}")
    forward: dict[str, list[str]] = defaultdict(list)
    backward: dict[str, list[str]] = defaultdict(list)
    for e in d.edges:
        forward[e.source].append(e.target)
        backward[e.target].append(e.source)
    keep = set(start)
    for links in (forward, backward):
        todo = list(start)
        seen = set(start)
        while todo:
            for nxt in links[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        keep |= seen
    return Diagram(
        tuple(n for n in d.nodes if n.id in keep),
        tuple(e for e in d.edges if e.source in keep and e.target in keep),
        tuple(replace(c, node_ids=tuple(i for i in c.node_ids if i in keep))
              for c in d.clusters if any(i in keep for i in c.node_ids)),
    )


def _fallback_kind(e: Edge) -> tuple[str, str]:
    """(what the junction's edge says, what stays on the source's edge)."""
    if e.label.startswith(_DEAD_LETTER):
        return _DEAD_LETTER, e.label[len(_DEAD_LETTER):].removeprefix(": ")
    return e.label, ""


def merge_fallbacks(d: Diagram) -> Diagram:
    """Dashed edges of one kind into one target, from two or more sources, meet in a
    junction node first."""
    groups: dict[tuple[str, str], list[Edge]] = defaultdict(list)
    for e in d.edges:
        if e.dashed and e.label != "alternate":
            groups[(e.target, _fallback_kind(e)[0])].append(e)
    merged = {key: edges for key, edges in groups.items() if len(edges) >= 2}
    if not merged:
        return d
    nodes = list(d.nodes)
    taken = {n.id for n in nodes}
    junction_of: dict[tuple[str, str], str] = {}
    for target, label in merged:
        base = f"j_{target}"
        node_id, n = base, 1
        while node_id in taken:
            n += 1
            node_id = f"{base}_{n}"
        taken.add(node_id)
        junction_of[(target, label)] = node_id
        nodes.append(Node(node_id, "junction", label))
    edges: list[Edge] = []
    written: set[str] = set()
    for e in d.edges:
        key = (e.target, _fallback_kind(e)[0]) if e.dashed else None
        junction = junction_of.get(key) if key is not None else None
        if junction is None:
            edges.append(e)
            continue
        edges.append(Edge(e.source, junction, _fallback_kind(e)[1], dashed=True))
        if junction not in written:
            written.add(junction)
            edges.append(Edge(junction, e.target, key[1] if key else "", dashed=True))
    return Diagram(tuple(nodes), tuple(edges), d.clusters)


def _prefix(name: str) -> str:
    return _SEPARATOR.split(name, maxsplit=1)[0]


def cluster(d: Diagram, by: ClusterBy) -> Diagram:
    """Boxes by kind, or by name prefix (a prefix of two or more entities); junctions
    stay outside."""
    boxes: dict[str, list[str]] = defaultdict(list)
    for n in d.nodes:
        if n.kind == "junction":
            continue
        boxes[_KIND_TITLES[n.kind] if by == "kind" else _prefix(n.name)].append(n.id)
    clusters = []
    for label, ids in boxes.items():
        if by == "prefix" and len(ids) < 2:
            continue
        clusters.append(Cluster(f"box_{re.sub(r'[^A-Za-z0-9_]', '_', label)}", label,
                                tuple(ids)))
    return replace(d, clusters=tuple(clusters))
