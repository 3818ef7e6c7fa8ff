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
    ignored-rate-limit    warning: a rate_limit on a group without a handler
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

from runner.topology.cycles import Cycle, find_arrival_cycles, find_cycles
from runner.topology.matching import topic_matches
from runner.topology.model import (
    NOWHERE,
    Binding,
    ConsumerGroup,
    Delivery,
    DlqPolicy,
    Exchange,
    ExchangeType,
    HeadersMatch,
    Overflow,
    Position,
    Topology,
)
from runner.topology.partial import KINDS, NO_GAPS, Gaps, locate
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
            hint = f'; "{name}" is a {KINDS[other]}' + advice.format(name=name)
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


_ALL_TYPES = frozenset(ExchangeType)
_NON_HEADERS = _ALL_TYPES - {ExchangeType.HEADERS}


def _bindings_of(
    idx: Index, types: frozenset[ExchangeType]
) -> Iterator[tuple[str, Binding, Exchange]]:
    """(path, binding, source exchange) of each binding whose exchange has one of `types`."""
    for i, b in enumerate(idx.topology.bindings):
        ex = idx.exchanges.get(b.exchange)
        if ex is not None and ex.type in types:
            yield f"bindings[{i}]", b, ex


def topic_patterns(idx: Index) -> Iterator[Problem]:
    for at, b, _ in _bindings_of(idx, frozenset({ExchangeType.TOPIC})):
        why = topic_pattern_error(b.routing_key)
        if why is not None:
            message = f'routing key "{b.routing_key}" is not a valid topic pattern: {why}'
            yield idx.problem(f"{at}.routing_key", "topic-pattern", ERROR, message, fallback=b.pos)


def headers_options(idx: Index) -> Iterator[Problem]:
    for at, b, ex in _bindings_of(idx, _NON_HEADERS):
        for key, used in (("headers", bool(b.headers)), ("match", b.match is not HeadersMatch.ALL)):
            if used or f"{at}.{key}" in idx.topology.positions:  # set, even to the default
                message = (
                    f'"{key}" only applies to headers exchanges; exchange "{b.exchange}" '
                    f"is of type {ex.type.value}"
                )
                yield idx.problem(f"{at}.{key}", "headers-option", ERROR, message, fallback=b.pos)


def ignored_routing_keys(idx: Index) -> Iterator[Problem]:
    for at, b, ex in _bindings_of(idx, frozenset({ExchangeType.FANOUT, ExchangeType.HEADERS})):
        if b.routing_key != "":
            message = (
                f'routing key "{b.routing_key}" is ignored: exchange "{b.exchange}" '
                f"is of type {ex.type.value}"
            )
            yield idx.problem(
                f"{at}.routing_key", "ignored-routing-key", WARNING, message, fallback=b.pos
            )


def literal_wildcards(idx: Index) -> Iterator[Problem]:
    for at, b, _ in _bindings_of(idx, frozenset({ExchangeType.DIRECT})):
        if "*" in b.routing_key or "#" in b.routing_key:
            message = (
                f'routing key "{b.routing_key}" on direct exchange "{b.exchange}" is matched '
                "literally: wildcards only work on topic exchanges"
            )
            yield idx.problem(
                f"{at}.routing_key", "literal-wildcard", WARNING, message, fallback=b.pos
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
    for found in find_arrival_cycles(idx):
        cycle = found.cycle
        route = " -> ".join(cycle.route)
        why = ", ".join(f'queue "{name}" ({reason})' for name, reason in found.why)
        message = (
            f"dead-letter cycle closed by queues that drop or refuse on arrival: {route}; "
            f"{why} {'pass' if len(found.why) > 1 else 'passes'} dead letters on at once, "
            "not after a message_ttl: a message "
            "that comes back to a queue it died in is dropped"
        )
        yield idx.problem(f"queues.{cycle.start}.dead_letter.exchange", "dlx-cycle", WARNING,
                          message, fallback=idx.queues[cycle.start].pos)


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


def ignored_rate_limits(idx: Index) -> Iterator[Problem]:
    """`rate_limit` paces the handlers this daemon runs; an external group has none."""
    for name, g in idx.groups.items():
        if g.rate_limit is not None and g.handler is None:
            yield idx.problem(
                f"consumer_groups.{name}.rate_limit",
                "ignored-rate-limit",
                WARNING,
                f'consumer group "{name}" has no handler, so its rate_limit limits nothing '
                "(it paces the handlers this daemon runs; limit external consumers on their side)",
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


@dataclass(frozen=True, slots=True)
class _Reader:
    """A consumer or group with a (sound) dlq_policy: where problems about it go."""

    path: str  # of its dlq_policy reference
    words: str  # 'consumer "c"'
    policy: DlqPolicy
    delivery: Delivery
    sources: tuple[str, ...]  # what it reads


def _readers(idx: Index) -> Iterator[_Reader]:
    readers: list[tuple[str, str, str | None, Delivery, tuple[str, ...]]] = [
        ("consumers", name, c.dlq_policy, c.delivery, (c.queue,))
        for name, c in idx.consumers.items()
    ]
    readers += [
        ("consumer_groups", name, g.dlq_policy, g.delivery, g.topics)
        for name, g in idx.groups.items()
    ]
    for kind, name, policy_name, delivery, sources in readers:
        policy = idx.policies.get(policy_name) if policy_name else None
        if policy is not None and idx.sound("dlq_policies", policy_name):
            words = f'{KINDS[kind]} "{name}"'
            yield _Reader(f"{kind}.{name}.dlq_policy", words, policy, delivery, sources)


def at_most_once_retries(idx: Index) -> Iterator[Problem]:
    for r in _readers(idx):
        if r.delivery is Delivery.AT_MOST_ONCE and r.policy.max_retries > 0:
            message = (
                f'dlq_policy "{r.policy.name}" retries {r.policy.max_retries} times but '
                f"{r.words} is at-most-once: nothing is retried, failures go straight to the DLQ"
            )
            rule = "at-most-once-retries"
            yield idx.problem(r.path, rule, WARNING, message, fallback=r.policy.pos)


def dlq_loops(idx: Index) -> Iterator[Problem]:
    for r in _readers(idx):
        if r.policy.dead_letter_queue in r.sources:
            message = (
                f'dlq_policy "{r.policy.name}" sends the failures of {r.words} back to '
                f'"{r.policy.dead_letter_queue}", which it reads: they would be handled again'
            )
            yield idx.problem(r.path, "dlq-loop", WARNING, message, fallback=r.policy.pos)


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
    Rule("ignored-rate-limit", ignored_rate_limits),
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


__all__ = [
    "RULES",
    "Cycle",
    "Index",
    "Rule",
    "check",
    "find_cycles",
    "topic_matches",
    "topic_pattern_error",
]
