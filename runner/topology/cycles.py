"""Dead-letter cycles: where a queue's dead letters can come back to it.

TOPOLOGY.md: follow each queue's dead_letter.exchange through the bindings its
key can match (a fixed dead_letter.routing_key, else the message's own key,
unknown here), through exchange-to-exchange bindings and alternate exchanges.
The search runs over (queue, key) states -- the key a dead letter carries is
either fixed by some queue upstream or unknown -- so it stays linear in the
number of states times bindings, with one exchange walk memoised per
(exchange, key). Queues with a message_ttl are left out: a cycle through one is
a deliberate delay loop. Cycles made of certain hops only are errors; the rest
depend on the key and are warnings (the `dlx-cycle` rule in rules.py). A TTL
queue that drops or refuses on arrival (`drops_on_arrival`) delays nothing it
passes on that way: cycles that only such queues close are warnings
(`find_arrival_cycles`); at run time the broker drops what comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from runner.topology.matching import matches_every_key, topic_matches
from runner.topology.model import (
    Binding,
    Exchange,
    ExchangeType,
    HeadersMatch,
    Overflow,
    Queue,
    Topology,
)


class Routes(Protocol):
    """What the search reads: name lookups and the bindings (rules.Index has them)."""

    @property
    def topology(self) -> Topology: ...

    @property
    def exchanges(self) -> Mapping[str, Exchange]: ...

    @property
    def queues(self) -> Mapping[str, Queue]: ...


NO = 0
MAYBE = 1
SURE = 2


def _match(kind: ExchangeType, b: Binding, key: str | None) -> int:
    """Whether a dead letter with `key` (None: unknown) takes binding `b`."""
    if kind is ExchangeType.FANOUT:
        return SURE
    if kind is ExchangeType.HEADERS:
        if b.headers:
            return MAYBE
        return SURE if b.match is HeadersMatch.ALL else NO
    if key is None:
        if kind is ExchangeType.TOPIC and matches_every_key(b.routing_key):
            return SURE
        return MAYBE
    if kind is ExchangeType.DIRECT:
        return SURE if b.routing_key == key else NO
    return SURE if topic_matches(b.routing_key, key) else NO


@dataclass(frozen=True, slots=True)
class Hop:
    """A queue a dead letter reaches from an exchange: surely or maybe, and via what."""

    queue: str
    certain: bool
    via: tuple[str, ...]  # exchanges passed, the dead-letter exchange first


@dataclass(frozen=True, slots=True)
class Cycle:
    """A dead-letter cycle, reported at `start`'s dead_letter.exchange."""

    start: str
    route: tuple[str, ...]  # 'queue "a"', 'exchange "dlx"', ..., 'queue "a"'
    certain: bool


class _Router:
    """Where a dead letter can go from an exchange; memoised per (exchange, key)."""

    def __init__(self, idx: Routes) -> None:
        self.exchanges = idx.exchanges
        self.out: dict[str, list[Binding]] = {}
        for b in idx.topology.bindings:
            self.out.setdefault(b.exchange, []).append(b)
        self.memo: dict[tuple[str, str | None], list[Hop]] = {}

    def reach(self, exchange: str, key: str | None) -> list[Hop]:
        found = self.memo.get((exchange, key))
        if found is None:
            found = self.memo[(exchange, key)] = self._walk(exchange, key)
        return found

    def _walk(self, exchange: str, key: str | None) -> list[Hop]:
        hops: dict[str, Hop] = {}
        for sure_only in (True, False):  # sure hops first, so they win
            need = SURE if sure_only else MAYBE
            seen = {exchange}
            stack: list[tuple[str, tuple[str, ...]]] = [(exchange, (exchange,))]
            while stack:
                name, via = stack.pop()
                ex = self.exchanges.get(name)
                if ex is None:
                    continue
                best = NO
                nexts: list[str] = []
                for b in self.out.get(name, ()):
                    m = _match(ex.type, b, key)
                    best = max(best, m)
                    if m < need:
                        continue
                    if b.queue is not None and b.queue not in hops:
                        hops[b.queue] = Hop(b.queue, sure_only, via)
                    elif b.to_exchange is not None:
                        nexts.append(b.to_exchange)
                # the alternate exchange gets what no binding matched
                ae_match = {SURE: NO, MAYBE: MAYBE, NO: SURE}[best]
                if ex.alternate_exchange is not None and ae_match >= need:
                    nexts.append(ex.alternate_exchange)
                for nxt in nexts:
                    if nxt not in seen:
                        seen.add(nxt)
                        stack.append((nxt, (*via, nxt)))
        return list(hops.values())


_State = tuple[str, str | None]  # (queue, key its dead letters carry in; None: unknown)
_Edge = tuple[_State, bool, tuple[str, ...]]


def drops_on_arrival(q: Queue) -> str | None:
    """Why `q` may dead-letter a message the moment it arrives (None: it never does):
    a zero length limit, or a full `reject-publish-dlx` queue refusing it."""
    if q.max_length == 0:
        return "max_length 0"
    if q.max_length_bytes == 0:
        return "max_length_bytes 0"
    if q.overflow is Overflow.REJECT_PUBLISH_DLX and (
            q.max_length is not None or q.max_length_bytes is not None):
        return "overflow reject-publish-dlx when full"
    return None


def _state_graph(
    idx: Routes, *, arrival: bool = False,
) -> dict[_State, list[_Edge]]:
    """The (queue, key) graph over queues whose dead letters can come back without a
    delay: no message_ttl (with `arrival`, also TTL queues that drop on arrival)."""
    router = _Router(idx)
    queues = idx.queues
    looping = {n for n, q in queues.items() if q.dead_letter and (
        q.message_ttl_s is None or (arrival and drops_on_arrival(q) is not None))}
    graph: dict[_State, list[_Edge]] = {}
    stack: list[_State] = [(n, None) for n in sorted(looping)]
    while stack:
        state = stack.pop()
        if state in graph:
            continue
        edges: list[_Edge] = []
        graph[state] = edges
        dl = queues[state[0]].dead_letter
        if state[0] not in looping or dl is None:
            continue
        key = dl.routing_key if dl.routing_key is not None else state[1]
        if state[1] is not None and dl.routing_key is None:
            # Back in a queue with a known key: the message has returned, which is the
            # cycle even if this key goes elsewhere now. (queue, None) covers every key,
            # so an uncertain edge to it makes such returns possible cycles.
            edges.append(((state[0], None), False, ()))
        for hop in router.reach(dl.exchange, key):
            if hop.queue in looping:
                nxt = (hop.queue, key)
                edges.append((nxt, hop.certain, hop.via))
                if nxt not in graph:
                    stack.append(nxt)
    return graph


def _components(
    nodes: Iterable[_State], succ: Callable[[_State], list[_State]]
) -> list[set[_State]]:
    """Strongly connected components (Tarjan, iterative) that contain a cycle."""
    index: dict[_State, int] = {}
    low: dict[_State, int] = {}
    on_stack: set[_State] = set()
    stack: list[_State] = []
    found: list[set[_State]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(succ(root)))]
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ(w))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
                if low[v] == index[v]:
                    comp: set[_State] = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in succ(v):
                        found.append(comp)
    return found


def _route(start: _State, edges: dict[_State, list[_Edge]]) -> tuple[str, ...] | None:
    """A shortest way from `start` back into its queue (any key), as words; or None."""
    parent: dict[_State, tuple[_State, tuple[str, ...]]] = {start: (start, ())}
    frontier = [start]
    while frontier:
        next_frontier: list[_State] = []
        for v in frontier:
            for w, _, via in edges.get(v, ()):
                if via and w[0] == start[0]:  # back, through at least one exchange
                    return _words(start, parent, v, via)
                if w not in parent:
                    parent[w] = (v, via)
                    next_frontier.append(w)
        frontier = next_frontier
    return None


def _words(
    start: _State,
    parent: dict[_State, tuple[_State, tuple[str, ...]]],
    last: _State,
    via: tuple[str, ...],
) -> tuple[str, ...]:
    segments = [[f'queue "{last[0]}"', *(f'exchange "{e}"' for e in via)]]
    node = last
    while node != start:
        node, hop = parent[node]
        if hop:  # an edge without exchanges only forgets the key: same queue, no hop
            segments.append([f'queue "{node[0]}"', *(f'exchange "{e}"' for e in hop)])
    return (*(word for seg in reversed(segments) for word in seg), f'queue "{start[0]}"')


def find_cycles(idx: Routes) -> list[Cycle]:
    """Every dead-letter cycle of the topology, each once.

    Certain: some queue q of a cycle of sure hops gets every message it dead-letters
    back through sure hops, whatever the message's own key (searched from (q, None)).
    The rest of the cycles (possibly depending on the key) are warnings.
    """
    return _cycles(_state_graph(idx))


@dataclass(frozen=True, slots=True)
class ArrivalCycle:
    """A cycle through a message_ttl queue that passes dead letters on at once because
    it drops or refuses them on arrival (`why`: queue -> reason), so its TTL delays
    nothing: the broker's cycle detection drops what comes back."""

    cycle: Cycle
    why: tuple[tuple[str, str], ...]


def find_arrival_cycles(idx: Routes) -> list[ArrivalCycle]:
    """Dead-letter cycles that only a drop (or refusal) on arrival can close: each goes
    through some message_ttl queue that drops on arrival, and is not a cycle without
    those queues (`find_cycles` reports those)."""
    ttl_drops = {n: why for n, q in idx.queues.items()
                 if q.dead_letter and q.message_ttl_s is not None
                 and (why := drops_on_arrival(q)) is not None}
    if not ttl_drops:
        return []
    out: list[ArrivalCycle] = []
    for cycle in _cycles(_state_graph(idx, arrival=True)):
        reasons = tuple((n, w) for n, w in sorted(ttl_drops.items())
                        if f'queue "{n}"' in cycle.route)
        if reasons:
            out.append(ArrivalCycle(cycle, reasons))
    return out


def _cycles(graph: dict[_State, list[_Edge]]) -> list[Cycle]:
    sure: dict[_State, list[_Edge]] = {s: [e for e in es if e[1]] for s, es in graph.items()}
    cycles: list[Cycle] = []
    in_error: set[str] = set()
    seen: set[frozenset[str]] = set()
    for certain, edges in ((True, sure), (False, graph)):

        def succ(s: _State, edges: dict[_State, list[_Edge]] = edges) -> list[_State]:
            return [e[0] for e in edges.get(s, ())]

        for comp in _components(sorted(graph, key=_state_key), succ):
            names = frozenset(s[0] for s in comp)
            if names in seen or (not certain and names & in_error):
                continue
            for queue in sorted(names) if certain else [min(comp, key=_state_key)[0]]:
                start = (queue, None) if certain else min(comp, key=_state_key)
                route = _route(start, edges)
                if route is not None:
                    seen.add(names)
                    if certain:
                        in_error |= names
                    cycles.append(Cycle(queue, route, certain))
                    break
    return cycles


def _state_key(s: _State) -> tuple[str, str]:
    return (s[0], "" if s[1] is None else "\x00" + s[1])
