"""The mapping: a topology as RabbitMQ definitions, and what cannot map.

`definitions(topology)` is pure: exchanges, queues (with their `x-` arguments)
and bindings as RabbitMQ stores them, the same shape as the management API's
`/api/definitions`. `unsupported(topology)` lists every field the RabbitMQ
backend cannot express, each with its document path and the reason; `runner
validate --backend amqp://...` reports them as errors, `runner plan --against`
marks them. docs/rabbitmq.md has the table field by field.

    queue                 classic queue (quorum with delivery_limit); arguments
                          x-max-priority, x-message-ttl (ms), x-max-length,
                          x-max-length-bytes, x-overflow, x-dead-letter-exchange,
                          x-dead-letter-routing-key, x-single-active-consumer,
                          x-delivery-limit = delivery_limit - 1 (RabbitMQ counts
                          redeliveries, we count deliveries)
    exchange              same type, durable, internal; alternate-exchange argument
    binding               queue or exchange-to-exchange binding; headers bindings
                          carry x-match and the headers as arguments
    topic T, N partitions N streams `T.0` .. `T.{N-1}`: x-max-age, x-max-length-bytes,
                          x-stream-max-segment-size-bytes
    idempotency           per consumer C with `idempotency:` a stream `__runner.idem.C`
                          (x-max-age = its window) of the keys it processed
    retry delays          per distinct delay D (ms) of every DLQ policy in use: a fanout
                          exchange and a queue `__runner.delay.Dms` with x-message-ttl D
                          and x-dead-letter-exchange "" -- a message published there
                          with routing key Q comes back into queue Q after D
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from runner.engine.contract import Capability, dlq_position_group
from runner.topology.diff import binding_name
from runner.topology.model import (
    DEFAULT_DLQ_POLICY,
    Delivery,
    DlqPolicy,
    ExponentialBackoff,
    Overflow,
    Queue,
    Topic,
    Topology,
)
from runner.topology.problems import Problem, Severity

# What the RabbitMQ backend can do at all (runner.engine.contract.Capability).
CAPABILITIES = frozenset(Capability) - {
    Capability.EXACTLY_ONCE,
    Capability.COMPACTION,
    Capability.IDEMPOTENT_PRODUCER,
    Capability.CHOSEN_MESSAGES,  # a queue has no ids to choose its messages by
}

RUNNER_PREFIX = "__runner."  # the runner's own queues and exchanges (validation reserves "__")
DELAY_PREFIX = "__runner.delay."
GROUP_PREFIX = "__runner.group."  # consumer groups: members, owners, committed offsets
KEYS_PREFIX = "__runner.idem."  # + consumer: the stream of its processed idempotency keys
KEYS_SEGMENT_BYTES = 8_000_000  # small segments: x-max-age drops old keys segment by segment

Arguments = tuple[tuple[str, object], ...]  # sorted (name, value)


def arguments(**values: object) -> Arguments:
    """Sorted (name, value) pairs; a None value is left out."""
    return tuple(sorted((k, v) for k, v in values.items() if v is not None))


@dataclass(frozen=True, slots=True)
class ExchangeDef:
    name: str
    type: str
    durable: bool = True
    internal: bool = False
    arguments: Arguments = ()


@dataclass(frozen=True, slots=True)
class QueueDef:
    name: str
    durable: bool = True
    arguments: Arguments = ()

    @property
    def type(self) -> str:
        return str(dict(self.arguments).get("x-queue-type", "classic"))


@dataclass(frozen=True, slots=True)
class BindingDef:
    source: str
    destination: str
    destination_type: str  # "queue" | "exchange"
    routing_key: str = ""
    arguments: Arguments = ()


@dataclass(frozen=True, slots=True)
class Definitions:
    """What a vhost holds (or should hold), each part sorted."""

    exchanges: tuple[ExchangeDef, ...] = ()
    queues: tuple[QueueDef, ...] = ()
    bindings: tuple[BindingDef, ...] = ()

    def exchange_map(self) -> dict[str, ExchangeDef]:
        return {e.name: e for e in self.exchanges}

    def queue_map(self) -> dict[str, QueueDef]:
        return {q.name: q for q in self.queues}


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A field the RabbitMQ backend cannot express."""

    entity: str  # the diff's entity kind: "topic", "queue", "consumer_group", ...
    name: str
    field: str  # YAML field, e.g. "cleanup_policy"
    path: str  # document path, for the position
    reason: str
    capability: Capability | None = None


# ---------------------------------------------------------------- names


def stream_name(topic: str, partition: int) -> str:
    """The stream that holds partition `partition` of `topic`."""
    return f"{topic}.{partition}"


def delay_name(delay_s: float) -> str:
    """The delay exchange and queue of one retry delay."""
    return f"{DELAY_PREFIX}{delay_ms(delay_s)}ms"


def member_queue(group: str, token: str) -> str:
    """A member's presence: exclusive to its connection (runner.backends.rabbitmq.groups)."""
    return f"{GROUP_PREFIX}{group}.member.{token}"


def owner_queue(group: str, topic: str, partition: int) -> str:
    """The ownership token of one partition of a group: exclusive to its owner's connection."""
    return f"{GROUP_PREFIX}{group}.owner.{stream_name(topic, partition)}"


def offset_queue(group: str, topic: str, partition: int) -> str:
    """The committed offset of one partition of a group: a durable queue of one message."""
    return f"{GROUP_PREFIX}{group}.offset.{stream_name(topic, partition)}"


def replay_queue(group: str) -> str:
    """The dead letters replayed back to consumer group `group` (the embedded engine's
    `__replay.<group>`): a durable classic queue its members consume before their
    partitions."""
    return f"{GROUP_PREFIX}{group}.replay"


def settled_queue(topic: str) -> str:
    """The settle markers of dead-letter topic `topic` (the embedded engine's hidden
    queue `__dlq.<topic>`): one message per dead letter replayed or purged on its own
    above the replay position, its message id `partition:offset`."""
    return f"{GROUP_PREFIX}{dlq_position_group(topic)}.settled"


def keys_stream(consumer: str) -> str:
    """The stream of the idempotency keys consumer `consumer` processed, shared by every
    daemon of the vhost (runner.backends.rabbitmq.keys)."""
    return f"{KEYS_PREFIX}{consumer}"


def keys_streams(topology: Topology) -> list[QueueDef]:
    """The keys stream of each consumer with `idempotency:` (`x-max-age`: its window)."""
    return [QueueDef(keys_stream(name), True, arguments(**{
        "x-queue-type": "stream",
        "x-max-age": max_age(c.idempotency.window_s),
        "x-stream-max-segment-size-bytes": KEYS_SEGMENT_BYTES,
    })) for name, c in topology.consumers if c.idempotency is not None]


def hidden_queues(topology: Topology) -> list[QueueDef]:
    """The runner's own durable queues beside `definitions` (declared by the runtime,
    not by `runner apply`): each group's replay queue, each dead-letter topic's markers."""
    classic = arguments(**{"x-queue-type": "classic"})
    names = [replay_queue(g) for g, _ in topology.consumer_groups]
    names += [settled_queue(t) for t in sorted(topology.dead_letter_topics())]
    return [QueueDef(n, True, classic) for n in names]


def delay_ms(delay_s: float) -> int:
    return max(1, round(delay_s * 1000))


def max_age(seconds: float) -> str:
    """x-max-age in RabbitMQ's unit form (whole seconds, rounded up)."""
    return f"{max(1, math.ceil(seconds))}s"


# ---------------------------------------------------------------- queues


def queue_arguments(q: Queue) -> Arguments:
    quorum = q.delivery_limit is not None
    return arguments(**{
        "x-queue-type": "quorum" if quorum else "classic",
        "x-max-priority": q.max_priority,
        "x-message-ttl": None if q.message_ttl_s is None else round(q.message_ttl_s * 1000),
        "x-max-length": q.max_length,
        "x-max-length-bytes": q.max_length_bytes,
        "x-overflow": None if q.overflow is Overflow.DROP_HEAD else q.overflow.value,
        "x-dead-letter-exchange": None if q.dead_letter is None else q.dead_letter.exchange,
        "x-dead-letter-routing-key": None if q.dead_letter is None else q.dead_letter.routing_key,
        "x-single-active-consumer": True if q.single_active_consumer else None,
        "x-delivery-limit": None if q.delivery_limit is None else q.delivery_limit - 1,
    })


def stream_arguments(t: Topic) -> Arguments:
    return arguments(**{
        "x-queue-type": "stream",
        "x-max-age": None if t.retention.time_s is None else max_age(t.retention.time_s),
        "x-max-length-bytes": t.retention.bytes,
        "x-stream-max-segment-size-bytes": t.segment_bytes,
    })


def policies_in_use(topology: Topology) -> list[DlqPolicy]:
    """The declared policies, and the default one when a handler runs without one."""
    found = [p for _, p in topology.dlq_policies]
    users = [c.dlq_policy for _, c in topology.consumers] + [
        g.dlq_policy for _, g in topology.consumer_groups if g.handler is not None
    ]
    if any(u is None for u in users):
        found.append(DEFAULT_DLQ_POLICY)
    return found


def retry_delays(topology: Topology) -> list[float]:
    """Every distinct non-zero retry delay (seconds) of the policies in use, sorted."""
    delays: set[int] = set()
    for policy in policies_in_use(topology):
        if isinstance(policy.backoff, ExponentialBackoff) and policy.backoff.jitter:
            continue  # reported by unsupported()
        for attempt in range(1, policy.max_retries + 1):
            d = policy.delay_before_retry(attempt)
            if d > 0:
                delays.add(delay_ms(d))
    return [ms / 1000 for ms in sorted(delays)]


# ---------------------------------------------------------------- definitions


def definitions(topology: Topology) -> Definitions:
    """The RabbitMQ definitions of `topology` (what `runner apply` declares)."""
    exchanges = [
        ExchangeDef(
            name, e.type.value, e.durable, e.internal,
            arguments(**{"alternate-exchange": e.alternate_exchange}),
        )
        for name, e in topology.exchanges
    ]
    queues = [QueueDef(name, q.durable, queue_arguments(q)) for name, q in topology.queues]
    for name, t in topology.topics:
        queues.extend(
            QueueDef(stream_name(name, p), True, stream_arguments(t)) for p in range(t.partitions)
        )
    bindings: list[BindingDef] = []
    topics = topology.topic_map()
    for b in topology.bindings:
        args = arguments()
        if b.headers:
            args = tuple(sorted((*b.headers, ("x-match", b.match.value))))
        if b.queue is not None:
            bindings.append(BindingDef(b.exchange, b.queue, "queue", b.routing_key, args))
        elif b.to_exchange is not None:
            bindings.append(BindingDef(b.exchange, b.to_exchange, "exchange", b.routing_key, args))
        elif b.topic is not None and b.topic in topics and topics[b.topic].partitions == 1:
            bindings.append(
                BindingDef(b.exchange, stream_name(b.topic, 0), "queue", b.routing_key, args)
            )
    for delay in retry_delays(topology):
        name = delay_name(delay)
        exchanges.append(ExchangeDef(name, "fanout"))
        queues.append(QueueDef(name, True, arguments(**{
            "x-queue-type": "classic",
            "x-message-ttl": delay_ms(delay),
            "x-dead-letter-exchange": "",
        })))
        bindings.append(BindingDef(name, name, "queue"))
    return Definitions(
        tuple(sorted(exchanges, key=lambda e: e.name)),
        tuple(sorted(queues, key=lambda q: q.name)),
        tuple(sorted(set(bindings), key=_binding_order)),
    )


def _binding_order(b: BindingDef) -> tuple[str, str, str, str, str]:
    return (b.source, b.destination_type, b.destination, b.routing_key, repr(b.arguments))


# ---------------------------------------------------------------- what cannot map


def unsupported(topology: Topology) -> list[Unsupported]:
    """Every field of `topology` the RabbitMQ backend cannot express, in document order."""
    found = [*_topics(topology), *_queues(topology), *_bindings(topology), *_policies(topology),
             *_deliveries(topology)]
    return sorted(found, key=lambda u: tuple(topology.position(u.path)))


def problems(topology: Topology) -> list[Problem]:
    """`unsupported(topology)` as validation errors (rule `backend`) at their positions."""
    out = []
    for u in unsupported(topology):
        where = topology.position(u.path)
        out.append(Problem(
            where.file, where.line, where.column, u.path, "backend", Severity.ERROR,
            f"the RabbitMQ backend cannot express {u.entity} {u.name!r} {u.field}: {u.reason}",
        ))
    return out


def _topics(topology: Topology) -> Iterator[Unsupported]:
    queues = topology.queue_map()
    for name, t in topology.topics:
        base = f"topics.{name}"
        if t.compact:
            yield Unsupported(
                "topic", name, "cleanup_policy", f"{base}.cleanup_policy",
                "RabbitMQ streams have no compaction (a stream only drops whole segments "
                "by age or size)", Capability.COMPACTION,
            )
        for p in range(t.partitions):
            if stream_name(name, p) in queues:
                yield Unsupported(
                    "topic", name, "partitions", f"{base}.partitions",
                    f"partition {p} is the stream {stream_name(name, p)!r}, "
                    "which is also the name of a queue",
                )


def _queues(topology: Topology) -> Iterator[Unsupported]:
    for name, q in topology.queues:
        base = f"queues.{name}"
        if q.delivery_limit is None:
            continue
        why = "delivery_limit needs a quorum queue (x-delivery-limit), and"
        if q.max_priority is not None:
            yield Unsupported("queue", name, "max_priority", f"{base}.max_priority",
                              f"{why} quorum queues have no priorities in RabbitMQ 3.10")
        if not q.durable:
            yield Unsupported("queue", name, "durable", f"{base}.durable",
                              f"{why} quorum queues are always durable")
        if q.overflow is Overflow.REJECT_PUBLISH_DLX:
            yield Unsupported("queue", name, "overflow", f"{base}.overflow",
                              f"{why} quorum queues do not support reject-publish-dlx")


def _bindings(topology: Topology) -> Iterator[Unsupported]:
    topics = topology.topic_map()
    for index, b in enumerate(topology.bindings):
        t = topics.get(b.topic) if b.topic is not None else None
        if t is not None and t.partitions > 1:
            yield Unsupported(
                "binding", binding_name(b), "topic", f"bindings[{index}].topic",
                f"topic {t.name!r} has {t.partitions} partitions: a RabbitMQ exchange cannot "
                "pick a partition by the key's murmur2 hash (only a 1-partition topic can be "
                "bound to an exchange)",
            )


def _policies(topology: Topology) -> Iterator[Unsupported]:
    for policy in policies_in_use(topology):
        b = policy.backoff
        if isinstance(b, ExponentialBackoff) and b.jitter:
            yield Unsupported(
                "dlq_policy", policy.name, "backoff.jitter",
                f"dlq_policies.{policy.name}.backoff.jitter",
                "retry delays are delay queues with one fixed x-message-ttl each, "
                "so a delay cannot be randomised", Capability.DELAYED_RETRY,
            )


def _deliveries(topology: Topology) -> Iterable[Unsupported]:
    why = ("exactly-once needs the ack of the input and the handler's outputs as one atomic "
           "step; RabbitMQ has no transaction across queues and streams")
    for name, g in topology.consumer_groups:
        if g.delivery is Delivery.EXACTLY_ONCE:
            yield Unsupported("consumer_group", name, "delivery",
                              f"consumer_groups.{name}.delivery", why, Capability.EXACTLY_ONCE)
    for name, c in topology.consumers:
        if c.delivery is Delivery.EXACTLY_ONCE:
            yield Unsupported("consumer", name, "delivery", f"consumers.{name}.delivery", why,
                              Capability.EXACTLY_ONCE)
