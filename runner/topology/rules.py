"""Semantic rules: what the schema cannot see in a built Topology.

Each rule is a small function with an id (`RULES`), given an `Index` of the
topology (name lookups built once, so every rule is linear) and yielding
`Problem`s positioned at the offending value. `check()` runs them all.

Rules (error unless noted):

    missing-reference     a name that does not exist, with a "did you mean"
    topic-pattern         an invalid topic-exchange binding pattern (`orders.#x`)
    headers-option        `headers` / `match` on a binding of a non-headers exchange
    overflow-dlx          `reject-publish-dlx` on a queue without `dead_letter`
    dlx-cycle             dead-letter cycles (error if certain, warning if key-dependent)
    ignored-routing-key   warning: a routing key on a fanout or headers binding
    literal-wildcard      warning: `*` or `#` in a direct exchange's binding key
    keyless-compacted     warning: a binding into a compacted topic that has no `key`
    priority-levels       warning: `max_priority` above 10
    idle-instances        warning: more group instances than partitions
    dropped-failures      warning: a consumer or group whose failures would be dropped
    at-most-once-retries  warning: a dlq_policy with retries under at-most-once
    dlq-loop              warning: a dlq_policy whose DLQ is what the consumer reads
    unreachable-internal  warning: an internal exchange nothing can publish to

On a partial topology (files with errors, see `runner.topology.partial`)
`check` is given the topology's `Gaps`: a reference to a name that is defined
but was not built is no problem, nothing at or inside an invalid value is
reported, an entity built from partly invalid data only gets its missing
references reported, rules that look at another entity skip tainted ones, and
the rules that need the whole topology (dead-letter cycles, unreachable
internal exchanges) wait until it is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from runner.topology.model import (
    NOWHERE,
    Binding,
    ConsumerGroup,
    Delivery,
    ExchangeType,
    HeadersMatch,
    Overflow,
    Position,
    Topology,
)
from runner.topology.partial import NO_GAPS, Gaps, locate
from runner.topology.problems import Problem, Severity
from runner.topology.suggest import Suggester

ERROR = Severity.ERROR
WARNING = Severity.WARNING
MAX_SENSIBLE_PRIORITY = 10


class Index:
    """Name lookups of one topology, built once and shared by every rule."""

    def __init__(self, topology: Topology, gaps: Gaps = NO_GAPS) -> None:
        self.topology = topology
        self.gaps = gaps
        self.suggest = Suggester()
        self.topics = topology.topic_map()
        self.exchanges = topology.exchange_map()
        self.queues = topology.queue_map()
        self.policies = topology.policy_map()
        self.groups = topology.group_map()
        self.consumers = topology.consumer_map()
        self.sections: dict[str, Mapping[str, object]] = {
            "topics": self.topics,
            "exchanges": self.exchanges,
            "queues": self.queues,
            "dlq_policies": self.policies,
            "consumer_groups": self.groups,
            "consumers": self.consumers,
        }

    def problem(
        self,
        path: str,
        rule: str,
        severity: Severity,
        message: str,
        *,
        fallback: Position = NOWHERE,
        entity: bool = False,
    ) -> Problem:
        """A problem at `path`: its value's position, else `fallback` (the entity's
        name), else an ancestor's. `entity=True` prefers the entity's name."""
        pos = None if entity else self.topology.positions.get(path)
        if pos is None:
            pos = fallback if fallback != NOWHERE else self.topology.position(path)
        return Problem(pos.file, pos.line, pos.column, path, rule, severity, message)

    def sound(self, section: str, name: str | None) -> bool:
        """Whether an entity was built from valid data only (None: no entity)."""
        return name is None or self.gaps.sound(f"{section}.{name}")

    def entity(self, path: str) -> str | None:
        """The entity path (`queues.a.b`, `bindings[3]`) of a document path."""
        found = locate(path, self.sections)
        return None if found is None else found[0]

    def may_exist(self, section: str, name: str) -> bool:
        """Whether `name` is defined in `section`, built or not."""
        return name in self.sections[section] or self.gaps.may_exist(section, name)


@dataclass(frozen=True, slots=True)
class Rule:
    """One semantic check: an id and a function yielding its problems."""

    id: str
    run: Callable[[Index], Iterable[Problem]]


_KIND_OF = {
    "topics": "topic",
    "exchanges": "exchange",
    "queues": "queue",
    "dlq_policies": "dlq_policy",
}
# a name of another kind where an exchange belongs: a classic RabbitMQ slip is
# naming the dead-letter queue where its exchange belongs
_NOT_AN_EXCHANGE = (("queues", ", not an exchange"), ("topics", ", not an exchange"))
_Wrong = tuple[tuple[str, str], ...]  # (section, advice) when the name is found there


def _reference(
    idx: Index,
    path: str,
    what: str,
    name: str | None,
    section: str,
    fallback: Position,
    owner: str = "",
    wrong: _Wrong = (),
) -> Iterator[Problem]:
    """A missing-reference problem unless `name` is defined in `section`."""
    if not name or idx.may_exist(section, name):
        return
    hint = idx.suggest(name, [*idx.sections[section], *idx.gaps.unbuilt.get(section, ())])
    for other, advice in wrong:
        if name in idx.sections[other]:
            hint = f'; "{name}" is a {_KIND_OF[other]}' + advice.format(name=name)
            break
    message = f'{what} "{name}"{owner} does not exist{hint}'
    yield idx.problem(path, "missing-reference", ERROR, message, fallback=fallback)


def _group_topic_paths(idx: Index, name: str, group: ConsumerGroup) -> list[str]:
    """Paths of a group's topic references (`topic: x` or `topics: [...]`)."""
    single = f"consumer_groups.{name}.topic"
    if len(group.topics) == 1 and single in idx.topology.positions:
        return [single]
    return [f"consumer_groups.{name}.topics[{i}]" for i in range(len(group.topics))]


# ---------------------------------------------------------------- references


def missing_references(idx: Index) -> Iterator[Problem]:
    for i, b in enumerate(idx.topology.bindings):
        refs: tuple[tuple[str, str, str | None, str, _Wrong], ...] = (
            ("exchange", "binding source exchange", b.exchange, "exchanges", _NOT_AN_EXCHANGE),
            ("queue", "binding destination queue", b.queue, "queues",
             (("topics", ': write "topic: {name}"'),)),
            ("topic", "binding destination topic", b.topic, "topics",
             (("queues", ': write "queue: {name}"'),)),
            ("to_exchange", "binding destination exchange", b.to_exchange, "exchanges",
             _NOT_AN_EXCHANGE),
        )  # fmt: skip
        for key, what, name, section, wrong in refs:
            path = f"bindings[{i}].{key}"
            yield from _reference(idx, path, what, name, section, b.pos, "", wrong)
    for name, ex in idx.exchanges.items():
        yield from _reference(
            idx,
            f"exchanges.{name}.alternate_exchange",
            "alternate exchange",
            ex.alternate_exchange,
            "exchanges",
            ex.pos,
            f' of exchange "{name}"',
            _NOT_AN_EXCHANGE,
        )
    for name, q in idx.queues.items():
        yield from _reference(
            idx,
            f"queues.{name}.dead_letter.exchange",
            "dead-letter exchange",
            q.dead_letter.exchange if q.dead_letter else None,
            "exchanges",
            q.pos,
            f' of queue "{name}"',
            _NOT_AN_EXCHANGE,
        )
    for name, p in idx.policies.items():
        dlq = p.dead_letter_queue
        if dlq and not idx.may_exist("queues", dlq) and not idx.may_exist("topics", dlq):
            path = f"dlq_policies.{name}.dead_letter_queue"
            message = (
                f'dead-letter queue "{dlq}" of dlq_policy "{name}" is neither a queue '
                f"nor a topic{idx.suggest(dlq, [*idx.queues, *idx.topics])}"
            )
            yield idx.problem(path, "missing-reference", ERROR, message, fallback=p.pos)
    for name, g in idx.groups.items():
        owner = f' of consumer group "{name}"'
        for path, topic in zip(_group_topic_paths(idx, name, g), g.topics, strict=True):
            yield from _reference(idx, path, "topic", topic, "topics", g.pos, owner)
        path = f"consumer_groups.{name}.dlq_policy"
        yield from _reference(idx, path, "dlq_policy", g.dlq_policy, "dlq_policies", g.pos, owner)
    for name, c in idx.consumers.items():
        owner = f' of consumer "{name}"'
        yield from _reference(
            idx,
            f"consumers.{name}.queue",
            "queue",
            c.queue,
            "queues",
            c.pos,
            owner,
            (("topics", ": read it with a consumer group"),),
        )
        path = f"consumers.{name}.dlq_policy"
        yield from _reference(idx, path, "dlq_policy", c.dlq_policy, "dlq_policies", c.pos, owner)


# ---------------------------------------------------------------- bindings


def topic_pattern_error(pattern: str) -> str | None:
    """Why `pattern` is not a valid topic-exchange binding key, or None.

    >>> topic_pattern_error("orders.#x")
    'word "#x" mixes a wildcard with other characters'
    """
    if pattern == "":
        return None  # matches only the empty routing key, as in RabbitMQ
    for word in pattern.split("."):
        if word == "":
            return "it has an empty word (two dots in a row, or a dot at an end)"
        if word not in ("*", "#") and ("*" in word or "#" in word):
            return f'word "{word}" mixes a wildcard with other characters'
    return None


def topic_patterns(idx: Index) -> Iterator[Problem]:
    for i, b in enumerate(idx.topology.bindings):
        ex = idx.exchanges.get(b.exchange)
        if ex is None or ex.type is not ExchangeType.TOPIC:
            continue
        why = topic_pattern_error(b.routing_key)
        if why is not None:
            message = f'routing key "{b.routing_key}" is not a valid topic pattern: {why}'
            yield idx.problem(
                f"bindings[{i}].routing_key", "topic-pattern", ERROR, message, fallback=b.pos
            )


def _explicit(idx: Index, path: str) -> bool:
    return path in idx.topology.positions


def headers_options(idx: Index) -> Iterator[Problem]:
    for i, b in enumerate(idx.topology.bindings):
        ex = idx.exchanges.get(b.exchange)
        if ex is None or ex.type is ExchangeType.HEADERS:
            continue
        for key, used in (
            ("headers", bool(b.headers) or _explicit(idx, f"bindings[{i}].headers")),
            ("match", b.match is not HeadersMatch.ALL or _explicit(idx, f"bindings[{i}].match")),
        ):
            if used:
                message = (
                    f'"{key}" only applies to headers exchanges; exchange "{b.exchange}" '
                    f"is of type {ex.type.value}"
                )
                yield idx.problem(
                    f"bindings[{i}].{key}", "headers-option", ERROR, message, fallback=b.pos
                )


def ignored_routing_keys(idx: Index) -> Iterator[Problem]:
    for i, b in enumerate(idx.topology.bindings):
        ex = idx.exchanges.get(b.exchange)
        if ex is None or b.routing_key == "":
            continue
        if ex.type in (ExchangeType.FANOUT, ExchangeType.HEADERS):
            message = (
                f'routing key "{b.routing_key}" is ignored: exchange "{b.exchange}" '
                f"is of type {ex.type.value}"
            )
            yield idx.problem(
                f"bindings[{i}].routing_key",
                "ignored-routing-key",
                WARNING,
                message,
                fallback=b.pos,
            )


def literal_wildcards(idx: Index) -> Iterator[Problem]:
    for i, b in enumerate(idx.topology.bindings):
        ex = idx.exchanges.get(b.exchange)
        if ex is None or ex.type is not ExchangeType.DIRECT:
            continue
        if "*" in b.routing_key or "#" in b.routing_key:
            message = (
                f'routing key "{b.routing_key}" on direct exchange "{b.exchange}" is matched '
                "literally: wildcards only work on topic exchanges"
            )
            yield idx.problem(
                f"bindings[{i}].routing_key", "literal-wildcard", WARNING, message, fallback=b.pos
            )


def keyless_compacted(idx: Index) -> Iterator[Problem]:
    # A message routed into a topic is keyed by the topic's `key` field, else keyless,
    # and a compacted topic refuses keyless records.
    for i, b in enumerate(idx.topology.bindings):
        topic = idx.topics.get(b.topic) if b.topic is not None else None
        if topic is None or not topic.compact or topic.key is not None:
            continue
        if not idx.sound("topics", topic.name):
            continue
        message = (
            f'topic "{topic.name}" is compacted but has no key: messages routed from exchange '
            f'"{b.exchange}" would be keyless and refused (set the topic\'s "key")'
        )
        yield idx.problem(
            f"bindings[{i}].topic", "keyless-compacted", WARNING, message, fallback=b.pos
        )


def unreachable_internal(idx: Index) -> Iterator[Problem]:
    if not idx.gaps.complete:
        return  # what feeds an exchange may be among the parts not built
    fed: set[str] = {b.to_exchange for b in idx.topology.bindings if b.to_exchange}
    fed.update(e.alternate_exchange for e in idx.exchanges.values() if e.alternate_exchange)
    fed.update(q.dead_letter.exchange for q in idx.queues.values() if q.dead_letter)
    for name, ex in idx.exchanges.items():
        if ex.internal and name not in fed:
            message = (
                f'internal exchange "{name}" receives nothing: no exchange binds to it and '
                "it is no alternate or dead-letter exchange"
            )
            yield idx.problem(
                f"exchanges.{name}.internal",
                "unreachable-internal",
                WARNING,
                message,
                fallback=ex.pos,
            )


# ---------------------------------------------------------------- queues


def overflow_dlx(idx: Index) -> Iterator[Problem]:
    for name, q in idx.queues.items():
        if q.overflow is Overflow.REJECT_PUBLISH_DLX and q.dead_letter is None:
            message = (
                f'overflow "reject-publish-dlx" on queue "{name}" needs a dead_letter exchange '
                "to send refused messages to"
            )
            yield idx.problem(
                f"queues.{name}.overflow", "overflow-dlx", ERROR, message, fallback=q.pos
            )


def priority_levels(idx: Index) -> Iterator[Problem]:
    for name, q in idx.queues.items():
        if q.max_priority is not None and q.max_priority > MAX_SENSIBLE_PRIORITY:
            message = (
                f'max_priority {q.max_priority} on queue "{name}" is above '
                f"{MAX_SENSIBLE_PRIORITY}; each level costs memory and few publishers "
                "need more than 10"
            )
            yield idx.problem(
                f"queues.{name}.max_priority", "priority-levels", WARNING, message, fallback=q.pos
            )


# ---------------------------------------------------------------- dead-letter cycles
#
# TOPOLOGY.md: follow each queue's dead_letter.exchange through the bindings its
# key can match (a fixed dead_letter.routing_key, else the message's own key,
# unknown here), through exchange-to-exchange bindings and alternate exchanges.
# The search runs over (queue, key) states -- the key a dead letter carries is
# either fixed by some queue upstream or unknown -- so it stays linear in the
# number of states times bindings, with one exchange walk memoised per
# (exchange, key). Queues with a message_ttl are left out: a cycle through one is
# a deliberate delay loop. Cycles made of certain hops only are errors; the rest
# depend on the key and are warnings.

NO = 0
MAYBE = 1
SURE = 2


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching, word by word: `*` one word, `#` zero or more."""
    words = key.split(".")
    states = {0}
    for w in pattern.split("."):
        if w == "#":
            states = set(range(min(states), len(words) + 1)) if states else set()
        elif w == "*":
            states = {i + 1 for i in states if i < len(words)}
        else:
            states = {i + 1 for i in states if i < len(words) and words[i] == w}
        if not states:
            return False
    return len(words) in states


def _match(kind: ExchangeType, b: Binding, key: str | None) -> int:
    """Whether a dead letter with `key` (None: unknown) takes binding `b`."""
    if kind is ExchangeType.FANOUT:
        return SURE
    if kind is ExchangeType.HEADERS:
        if b.headers:
            return MAYBE
        return SURE if b.match is HeadersMatch.ALL else NO
    if key is None:
        if kind is ExchangeType.TOPIC and all(w == "#" for w in b.routing_key.split(".")):
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

    def __init__(self, idx: Index) -> None:
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


def _state_graph(idx: Index) -> dict[_State, list[_Edge]]:
    router = _Router(idx)
    queues = idx.queues
    looping = {n for n, q in queues.items() if q.dead_letter and q.message_ttl_s is None}
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


def find_cycles(idx: Index) -> list[Cycle]:
    """Every dead-letter cycle of the topology, each once.

    Certain: some queue q of a cycle of sure hops gets every message it dead-letters
    back through sure hops, whatever the message's own key (searched from (q, None)).
    The rest of the cycles (possibly depending on the key) are warnings.
    """
    graph = _state_graph(idx)
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


def dead_letter_cycles(idx: Index) -> Iterator[Problem]:
    if not idx.gaps.complete:
        return  # a route may run through the parts not built
    for cycle in find_cycles(idx):
        path = f"queues.{cycle.start}.dead_letter.exchange"
        fallback = idx.queues[cycle.start].pos
        route = " -> ".join(cycle.route)
        if cycle.certain:
            message = (
                f"dead-letter cycle: {route}; messages would loop forever "
                "(a message_ttl on a queue of the cycle makes it a deliberate delay loop)"
            )
            yield idx.problem(path, "dlx-cycle", ERROR, message, fallback=fallback)
        else:
            message = f"possible dead-letter cycle, depending on the routing key: {route}"
            yield idx.problem(path, "dlx-cycle", WARNING, message, fallback=fallback)


# ---------------------------------------------------------------- consumers


def idle_instances(idx: Index) -> Iterator[Problem]:
    for name, g in idx.groups.items():
        known = [
            (idx.topics[t].partitions, t)
            for t in g.topics
            if t in idx.topics and idx.sound("topics", t)
        ]
        if not known:
            continue
        partitions, topic = min(known)
        if g.instances > partitions:
            idle = g.instances - partitions
            message = (
                f'consumer group "{name}" has {g.instances} instances but topic "{topic}" '
                f"has {partitions} partition{'s' if partitions != 1 else ''}; "
                f"{idle} instance{'s' if idle != 1 else ''} would "
                + ("stay idle" if len(g.topics) == 1 else "get none of its partitions")
            )
            yield idx.problem(
                f"consumer_groups.{name}.instances",
                "idle-instances",
                WARNING,
                message,
                fallback=g.pos,
            )


def dropped_failures(idx: Index) -> Iterator[Problem]:
    for name, c in idx.consumers.items():
        q = idx.queues.get(c.queue)
        if q is None or c.dlq_policy is not None or q.dead_letter is not None:
            continue
        if not idx.sound("queues", c.queue):
            continue
        message = (
            f'failures of consumer "{name}" would be dropped: it has no dlq_policy and '
            f'queue "{c.queue}" has no dead_letter'
        )
        yield idx.problem(
            f"consumers.{name}", "dropped-failures", WARNING, message, fallback=c.pos, entity=True
        )
    for name, g in idx.groups.items():
        if g.handler is None or g.dlq_policy is not None:
            continue  # an external group (HTTP consumers) handles its own failures
        message = (
            f'failures of consumer group "{name}" would be dropped: it has no dlq_policy '
            "(a group has no dead_letter exchange to fall back on)"
        )
        yield idx.problem(
            f"consumer_groups.{name}",
            "dropped-failures",
            WARNING,
            message,
            fallback=g.pos,
            entity=True,
        )


def _readers(idx: Index) -> Iterator[tuple[str, str, str | None, Delivery, tuple[str, ...]]]:
    """(kind, name, dlq_policy, delivery, what it reads) for every consumer and group."""
    for name, c in idx.consumers.items():
        yield "consumers", name, c.dlq_policy, c.delivery, (c.queue,)
    for name, g in idx.groups.items():
        yield "consumer_groups", name, g.dlq_policy, g.delivery, g.topics


_KIND_WORD = {"consumers": "consumer", "consumer_groups": "consumer group"}


def at_most_once_retries(idx: Index) -> Iterator[Problem]:
    for kind, name, policy_name, delivery, _ in _readers(idx):
        policy = idx.policies.get(policy_name) if policy_name else None
        if policy is None or delivery is not Delivery.AT_MOST_ONCE or policy.max_retries == 0:
            continue
        if not idx.sound("dlq_policies", policy_name):
            continue
        message = (
            f'dlq_policy "{policy_name}" retries {policy.max_retries} times but '
            f'{_KIND_WORD[kind]} "{name}" is at-most-once: nothing is retried, failures go '
            "straight to the DLQ"
        )
        yield idx.problem(
            f"{kind}.{name}.dlq_policy",
            "at-most-once-retries",
            WARNING,
            message,
            fallback=policy.pos,
        )


def dlq_loops(idx: Index) -> Iterator[Problem]:
    for kind, name, policy_name, _, sources in _readers(idx):
        policy = idx.policies.get(policy_name) if policy_name else None
        if policy is None or policy.dead_letter_queue not in sources:
            continue
        if not idx.sound("dlq_policies", policy_name):
            continue
        message = (
            f'dlq_policy "{policy_name}" sends the failures of {_KIND_WORD[kind]} "{name}" '
            f'back to "{policy.dead_letter_queue}", which it reads: they would be handled again'
        )
        yield idx.problem(
            f"{kind}.{name}.dlq_policy", "dlq-loop", WARNING, message, fallback=policy.pos
        )


RULES: tuple[Rule, ...] = (
    Rule("missing-reference", missing_references),
    Rule("topic-pattern", topic_patterns),
    Rule("headers-option", headers_options),
    Rule("overflow-dlx", overflow_dlx),
    Rule("dlx-cycle", dead_letter_cycles),
    Rule("ignored-routing-key", ignored_routing_keys),
    Rule("literal-wildcard", literal_wildcards),
    Rule("keyless-compacted", keyless_compacted),
    Rule("priority-levels", priority_levels),
    Rule("idle-instances", idle_instances),
    Rule("dropped-failures", dropped_failures),
    Rule("at-most-once-retries", at_most_once_retries),
    Rule("dlq-loop", dlq_loops),
    Rule("unreachable-internal", unreachable_internal),
)


def check(
    topology: Topology, *, rules: Iterable[Rule] = RULES, gaps: Gaps = NO_GAPS
) -> list[Problem]:
    """Every semantic problem of `topology` (references, cycles, warnings...), sorted.

    `gaps`: what a partial topology lacks; problems that merely follow from an
    error already reported are left out.
    """
    idx = Index(topology, gaps)
    found = [p for rule in rules for p in rule.run(idx)]
    if not gaps.complete or gaps.invalid:
        found = [p for p in found if _news(idx, p)]
    found.sort(key=Problem.sort_key)
    return found


def _news(idx: Index, problem: Problem) -> bool:
    """Whether a problem is news, not a consequence of an error already reported."""
    if idx.gaps.covers(problem.path):
        return False
    if problem.rule == "missing-reference":
        return True
    entity = idx.entity(problem.path)
    return entity is None or idx.gaps.sound(entity)


__all__ = ["RULES", "Index", "Rule", "check", "topic_pattern_error"]
