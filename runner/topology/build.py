"""Build: schema-valid plain data of one or more files -> a resolved `Topology`.

Every default of TOPOLOGY.md is filled in here and every unit resolved
(durations to float seconds, sizes to int bytes), so nothing downstream looks
an option up by string. Files are merged in the order given; a name defined
twice (in one file or across files; queues and topics share one namespace) is
an error naming both places, as are reserved names (`__...` for the engine,
`amq....` as in RabbitMQ).

The merged `positions` map renumbers bindings: the second file's
`bindings[0]` is `bindings[N]` when the first file had N, matching the index
in `Topology.bindings`.

`build_partial` builds from files that had errors (each with its `Damage`):
whole invalid sections and entities are left out (their names are remembered
as `unbuilt`), the other damaged entities are built without their invalid
fields, and an unreadable binding becomes a placeholder so indexes still
match the files. It returns `Gaps` saying what the rules must not trust.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

from runner.topology.model import (
    Alert,
    Assignment,
    Binding,
    Consumer,
    ConsumerGroup,
    DeadLetter,
    Delivery,
    DlqPolicy,
    Exchange,
    ExchangeType,
    ExponentialBackoff,
    HeadersMatch,
    Idempotency,
    OffsetReset,
    Overflow,
    Position,
    Queue,
    Retention,
    Topic,
    Topology,
)
from runner.topology.partial import KINDS, NO_GAPS, WHOLE, Damage, Gaps, locate
from runner.topology.problems import Problem, Severity
from runner.topology.source import SourceDocument
from runner.topology.units import parse_duration, parse_rate, parse_size

DEFAULT_RETENTION = "7d"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_DELETE_RETENTION = "24h"  # Kafka's delete.retention.ms
DEFAULT_TIMEOUT = "5m"
DEFAULT_BACKOFF = ("1s", "5s", "30s")
MAX_ROUTING_KEY_BYTES = 255  # AMQP's shortstr


class _Builder:
    """Builds entities file by file, collecting names, positions and problems."""

    def __init__(
        self, documents: Sequence[SourceDocument], damages: Sequence[Damage] | None = None
    ) -> None:
        self.documents = documents
        self.damages = list(damages) if damages is not None else [Damage() for _ in documents]
        self.damage = self.damages[0]
        # what the partial topology lacks (see runner.topology.partial)
        self.unbuilt: dict[str, set[str]] = {}
        self.unknown: set[str] = set()
        self.tainted: set[str] = set()
        self.invalid_paths: set[str] = set()
        self.offset = 0  # of the current document's bindings in the merged topology
        self.problems: list[Problem] = []
        self.positions: dict[str, Position] = {}
        self.doc: SourceDocument = documents[0]
        # namespace -> name -> (kind, position)
        self.names: dict[str, dict[str, tuple[str, Position]]] = {}
        # section -> [(name, entity)] in document order
        self.built: dict[str, list[tuple[str, Any]]] = {}

    # ------------------------------------------------------------ helpers

    def pos(self, path: str) -> Position:
        doc = self.doc
        found = doc.key_positions.get(path) or doc.positions.get(path)
        return found if found is not None else Position(doc.file, 1, 1)

    def error(self, path: str, rule: str, message: str, pos: Position | None = None) -> None:
        where = pos if pos is not None else self.pos(path)
        self.problems.append(
            Problem(where.file, where.line, where.column, path, rule, Severity.ERROR, message)
        )

    def value_pos(self, path: str) -> Position:
        found = self.doc.positions.get(path)
        return found if found is not None else self.pos(path)

    def duration(self, path: str, value: Any, *, allow_forever: bool = False) -> float | None:
        """Seconds of a duration; reports an error (and gives 0) when it does not parse."""
        try:
            return parse_duration(value, allow_forever=allow_forever)
        except ValueError as exc:
            self.invalid(path, f"{_field(path)}: {exc}")
            return 0.0

    def size(self, path: str, value: Any, *, allow_unlimited: bool = False) -> int | None:
        """Bytes of a size; reports an error (and gives 0) when it does not parse."""
        try:
            return parse_size(value, allow_unlimited=allow_unlimited)
        except ValueError as exc:
            self.invalid(path, f"{_field(path)}: {exc}")
            return 0

    def rate(self, path: str, spec: dict[str, Any], key: str) -> float | None:
        """Per-second rate of `spec[key]` (None when absent); an error when it does not parse."""
        value = spec.get(key)
        if value is None:
            return None
        try:
            return parse_rate(value)
        except ValueError as exc:
            self.invalid(f"{path}.{key}", f"{key}: {exc}")
            return None

    def invalid(self, path: str, message: str) -> None:
        self.error(path, "invalid-value", message, self.value_pos(path))
        self.invalid_paths.add(_renumber(path, self.offset))
        found = locate(path, self.doc.data)
        if found is not None:
            self.tainted.add(_renumber(found[0], self.offset))

    def routing_key(self, path: str, key: str | None, label: str) -> str | None:
        """A routing key, reported when longer than AMQP allows (255 bytes in UTF-8)."""
        size = len(key.encode("utf-8", "surrogatepass")) if key is not None else 0
        if size > MAX_ROUTING_KEY_BYTES:
            self.invalid(
                path,
                f"{label} is {size} bytes long (UTF-8); AMQP allows at most "
                f"{MAX_ROUTING_KEY_BYTES} bytes",
            )
        return key

    def claim(self, namespace: str, kind: str, name: str, path: str) -> bool:
        """Register a name; report reserved and duplicate names. False when refused."""
        here = self.pos(path)
        ok = True
        if _reserved(name, kind) and name.startswith("__"):
            self.error(
                path,
                "reserved-name",
                f'{kind} name "{name}" is reserved: names starting with "__" belong to the engine',
            )
            ok = False
        elif _reserved(name, kind) and name.startswith(REPLY_ADDRESS_PREFIX):
            self.error(
                path,
                "reserved-name",
                f'{kind} name "{name}" is reserved: names starting with '
                f'"{REPLY_ADDRESS_PREFIX}" are the private reply addresses of request-reply',
            )
            ok = False
        elif _reserved(name, kind):
            self.error(
                path,
                "reserved-name",
                f'{kind} name "{name}" is reserved: names starting '
                'with "amq." are reserved as in RabbitMQ',
            )
            ok = False
        taken = self.names.setdefault(namespace, {})
        first = taken.get(name)
        if first is not None:
            other_kind, other_pos = first
            if other_kind == kind:
                message = f'{kind} "{name}" is defined twice: at {other_pos} and at {here}'
            else:
                message = (
                    f'name "{name}" is used twice: by the {other_kind} at {other_pos} and by the '
                    f"{kind} at {here} (queues and topics share one namespace)"
                )
            self.error(path, "duplicate-name", message)
            return False
        taken[name] = (kind, here)
        return ok

    def entities(self, section: str, make: Callable[[str, str, dict[str, Any]], Any]) -> None:
        """Build one section of the current document into `self.built[section]`."""
        namespace = "destinations" if section in ("topics", "queues") else section
        out = self.built.setdefault(section, [])
        specs = self.doc.data.get(section)
        if section in self.damage.sections or not isinstance(specs, dict):
            if specs is not None:
                self.unknown.add(section)
            return
        for name, spec in specs.items():
            path = f"{section}.{name}"
            bad = self.damage.fields(path)
            if bad is not None and WHOLE in bad:
                self.unbuilt.setdefault(section, set()).add(name)
                continue
            if not self.claim(namespace, KINDS[section], name, path):
                if _reserved(name, KINDS[section]):
                    self.unbuilt.setdefault(section, set()).add(name)
                continue
            if bad is None:
                out.append((name, make(name, path, spec or {})))
                continue
            self.tainted.add(path)
            entity = self.lenient(make, name, path, spec, bad)
            if entity is None:
                self.unbuilt.setdefault(section, set()).add(name)
            else:
                out.append((name, entity))

    def lenient(
        self,
        make: Callable[[str, str, dict[str, Any]], Any],
        name: str,
        path: str,
        spec: Any,
        bad: set[str],
    ) -> Any:
        """An entity built without its invalid fields; None when it cannot be built."""
        if spec is not None and not isinstance(spec, dict):
            return None
        usable = {k: v for k, v in (spec or {}).items() if k not in bad}
        try:
            return make(name, path, usable)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None  # e.g. a required key is what was invalid

    # ------------------------------------------------------------ entities

    def topic(self, name: str, path: str, spec: dict[str, Any]) -> Topic:
        retention = spec.get("retention") or {}
        policy = spec.get("cleanup_policy", "delete")
        policies = {policy} if isinstance(policy, str) else set(policy)
        return Topic(
            name=name,
            partitions=int(spec.get("partitions", 1)),
            key=spec.get("key"),
            retention=Retention(
                time_s=self.duration(
                    f"{path}.retention.time",
                    retention.get("time", DEFAULT_RETENTION),
                    allow_forever=True,
                ),
                bytes=self.size(
                    f"{path}.retention.bytes",
                    retention.get("bytes", "unlimited"),
                    allow_unlimited=True,
                ),
            ),
            compact="compact" in policies,
            delete="delete" in policies,
            segment_bytes=self._positive_size(
                f"{path}.segment_bytes", spec.get("segment_bytes", DEFAULT_SEGMENT_BYTES)
            ),
            max_message_bytes=self._positive_size(
                f"{path}.max_message_bytes",
                spec.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES),
            ),
            delete_retention_s=self.duration(
                f"{path}.delete_retention", spec.get("delete_retention", DEFAULT_DELETE_RETENTION)
            ) or 0.0,
            publish_rate=self.rate(path, spec, "publish_rate"),
            pos=self.pos(path),
        )

    def _positive_size(self, path: str, value: Any) -> int:
        size = self.size(path, value)
        if size == 0 and self.problems and self.problems[-1].path == path:
            return 1  # already reported as unparsable
        if size is None or size < 1:
            self.invalid(path, f"{_field(path)} must be at least 1 byte; got {value!r}")
            return 1
        return size

    def exchange(self, name: str, path: str, spec: dict[str, Any]) -> Exchange:
        return Exchange(
            name=name,
            type=ExchangeType(spec["type"]),
            durable=bool(spec.get("durable", True)),
            internal=bool(spec.get("internal", False)),
            alternate_exchange=spec.get("alternate_exchange"),
            publish_rate=self.rate(path, spec, "publish_rate"),
            pos=self.pos(path),
        )

    def queue(self, name: str, path: str, spec: dict[str, Any]) -> Queue:
        ttl = spec.get("message_ttl")
        length_bytes = spec.get("max_length_bytes")
        dead = spec.get("dead_letter")
        return Queue(
            name=name,
            durable=bool(spec.get("durable", True)),
            max_priority=_int_or_none(spec.get("max_priority")),
            message_ttl_s=None if ttl is None else self.duration(f"{path}.message_ttl", ttl),
            max_length=_int_or_none(spec.get("max_length")),
            max_length_bytes=None
            if length_bytes is None
            else self.size(f"{path}.max_length_bytes", length_bytes),
            overflow=Overflow(spec.get("overflow", Overflow.DROP_HEAD.value)),
            delivery_limit=_int_or_none(spec.get("delivery_limit")),
            single_active_consumer=bool(spec.get("single_active_consumer", False)),
            dead_letter=None
            if dead is None
            else DeadLetter(
                exchange=dead["exchange"],
                routing_key=self.routing_key(
                    f"{path}.dead_letter.routing_key",
                    dead.get("routing_key"),
                    "dead_letter.routing_key",
                ),
            ),
            publish_rate=self.rate(path, spec, "publish_rate"),
            pos=self.pos(path),
        )

    def binding(self, path: str, spec: dict[str, Any]) -> Binding:
        headers = spec.get("headers") or {}
        return Binding(
            exchange=spec.get("exchange", ""),
            queue=spec.get("queue"),
            to_exchange=spec.get("to_exchange"),
            topic=spec.get("topic"),
            routing_key=self.routing_key(
                f"{path}.routing_key", spec.get("routing_key", "") or "", "routing_key"
            )
            or "",
            match=HeadersMatch(spec.get("match", HeadersMatch.ALL.value)),
            headers=tuple(sorted((str(k), _header_text(v)) for k, v in headers.items())),
            pos=self.value_pos(path),
        )

    def policy(self, name: str, path: str, spec: dict[str, Any]) -> DlqPolicy:
        raw = spec.get("backoff", list(DEFAULT_BACKOFF))
        backoff: tuple[float, ...] | ExponentialBackoff
        if isinstance(raw, dict):
            base = f"{path}.backoff"
            backoff = ExponentialBackoff(
                initial_s=self._seconds(f"{base}.initial", raw.get("initial", "1s")),
                multiplier=self._finite(f"{base}.multiplier", raw.get("multiplier", 2.0)),
                max_s=self._seconds(f"{base}.max", raw.get("max", "30s")),
                jitter=self._finite(f"{base}.jitter", raw.get("jitter", 0.0)),
            )
        else:
            backoff = tuple(
                self._seconds(f"{path}.backoff[{i}]", item) for i, item in enumerate(raw)
            )
        alert = spec.get("alert")
        max_age = None if alert is None else alert.get("max_age")
        return DlqPolicy(
            name=name,
            max_retries=int(spec.get("max_retries", 3)),
            backoff=backoff,
            dead_letter_queue=spec.get("dead_letter_queue"),
            no_retry_on=tuple(spec.get("no_retry_on") or ()),
            alert=None
            if alert is None
            else Alert(
                max_depth=_int_or_none(alert.get("max_depth")),
                max_age_s=None
                if max_age is None
                else self.duration(f"{path}.alert.max_age", max_age),
            ),
            pos=self.pos(path),
        )

    def _finite(self, path: str, value: Any) -> float:
        number = float(value)
        if not math.isfinite(number):  # .nan passes every range check of the schema
            self.invalid(path, f"{_field(path)} must be a finite number; got {value}")
            return 0.0
        return number

    def _timeout(self, path: str, spec: dict[str, Any]) -> float:
        seconds = self._seconds(f"{path}.timeout", spec.get("timeout", DEFAULT_TIMEOUT))
        if seconds <= 0 and "timeout" in spec:
            message = f'timeout must be longer than 0s; got "{spec["timeout"]}"'
            self.invalid(f"{path}.timeout", message)
        return seconds

    def _seconds(self, path: str, value: Any) -> float:
        seconds = self.duration(path, value)
        assert seconds is not None  # forever is not allowed here
        return seconds

    def group(self, name: str, path: str, spec: dict[str, Any]) -> ConsumerGroup:
        topic = spec.get("topic")
        topics = (topic,) if topic is not None else tuple(spec.get("topics") or ())
        return ConsumerGroup(
            name=name,
            topics=topics,
            handler=spec.get("handler"),
            instances=int(spec.get("instances", 1)),
            assignment=Assignment(spec.get("assignment", Assignment.RANGE.value)),
            offset_reset=OffsetReset(spec.get("offset_reset", OffsetReset.EARLIEST.value)),
            delivery=Delivery(spec.get("delivery", Delivery.AT_LEAST_ONCE.value)),
            dlq_policy=spec.get("dlq_policy"),
            timeout_s=self._timeout(path, spec),
            rate_limit=self.rate(path, spec, "rate_limit"),
            max_lag=_int_or_none(spec.get("max_lag")),
            pos=self.pos(path),
        )

    def consumer(self, name: str, path: str, spec: dict[str, Any]) -> Consumer:
        concurrency = int(spec.get("concurrency", 1))
        idem = spec.get("idempotency")
        return Consumer(
            name=name,
            queue=spec.get("queue", ""),  # missing only in a partial build
            handler=spec.get("handler", ""),
            concurrency=concurrency,
            prefetch=int(spec.get("prefetch", 10 * concurrency)),
            delivery=Delivery(spec.get("delivery", Delivery.AT_LEAST_ONCE.value)),
            timeout_s=self._timeout(path, spec),
            dlq_policy=spec.get("dlq_policy"),
            idempotency=None
            if idem is None
            else Idempotency(
                key=idem.get("key", "message_id"),
                window_s=self._seconds(f"{path}.idempotency.window", idem.get("window", "24h")),
            ),
            rate_limit=self.rate(path, spec, "rate_limit"),
            pos=self.pos(path),
        )

    # ------------------------------------------------------------ whole topology

    def build(self, *, partial: bool = False) -> Topology | None:
        name, name_pos = None, None
        for doc, damage in zip(self.documents, self.damages, strict=True):
            self.doc = doc
            value = doc.data.get("name")
            if value is None or "name" in damage.top:
                continue
            here = self.value_pos("name")
            if name is None:
                name, name_pos = value, here
            elif value != name:
                self.error(
                    "name",
                    "name-mismatch",
                    f'name "{value}" differs from name "{name}" at {name_pos}; '
                    "the files of one topology share one name",
                    here,
                )
        makers: dict[str, Callable[[str, str, dict[str, Any]], Any]] = {
            "topics": self.topic,
            "queues": self.queue,
            "exchanges": self.exchange,
            "dlq_policies": self.policy,
            "consumer_groups": self.group,
            "consumers": self.consumer,
        }
        bindings: list[Binding] = []
        for doc, damage in zip(self.documents, self.damages, strict=True):
            self.doc, self.damage = doc, damage
            offset = self.offset = len(bindings)
            for section in doc.data:  # in the file's order, so "first" means first read
                make = makers.get(section)
                if make is not None:
                    self.entities(section, make)
            self.bindings(bindings)
            self._merge_positions(doc, offset)
            self.invalid_paths.update(_renumber(path, offset) for path in damage.paths)
        if not partial and any(p.is_error for p in self.problems):
            return None
        return Topology(
            version=1,
            name=name,
            topics=self.sorted("topics"),
            exchanges=self.sorted("exchanges"),
            queues=self.sorted("queues"),
            bindings=tuple(bindings),
            dlq_policies=self.sorted("dlq_policies"),
            consumer_groups=self.sorted("consumer_groups"),
            consumers=self.sorted("consumers"),
            positions=MappingProxyType(self.positions),
            files=tuple(doc.file for doc in self.documents),
        )

    def bindings(self, out: list[Binding]) -> None:
        """Add the current document's bindings; a damaged one is built without its
        invalid fields (an unreadable one becomes a placeholder, keeping indexes)."""
        specs = self.doc.data.get("bindings")
        if "bindings" in self.damage.sections or not isinstance(specs, list):
            if specs is not None:
                self.unknown.add("bindings")
            return
        offset = len(out)
        for index, spec in enumerate(specs):
            path = f"bindings[{index}]"
            bad = self.damage.fields(path)
            if bad is None:
                out.append(self.binding(path, spec))
                continue
            self.tainted.add(f"bindings[{offset + index}]")
            if WHOLE in bad or not isinstance(spec, dict):
                out.append(Binding(exchange="", pos=self.value_pos(path)))
            else:
                out.append(self.binding(path, {k: v for k, v in spec.items() if k not in bad}))

    def gaps(self) -> Gaps:
        return Gaps(
            unbuilt=MappingProxyType({k: frozenset(v) for k, v in self.unbuilt.items()}),
            unknown=frozenset(self.unknown),
            tainted=frozenset(self.tainted),
            invalid=frozenset(self.invalid_paths),
        )

    def sorted(self, section: str) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted(self.built.get(section, ()), key=lambda pair: str(pair[0])))

    def _merge_positions(self, doc: SourceDocument, binding_offset: int) -> None:
        if binding_offset == 0:
            self.positions.update(doc.positions)
            return
        for path, pos in doc.positions.items():
            self.positions[_renumber(path, binding_offset)] = pos


def build(documents: Sequence[SourceDocument]) -> tuple[Topology | None, list[Problem]]:
    """Merge schema-valid documents into one Topology; None when any error was found."""
    if not documents:
        return None, []
    builder = _Builder(documents)
    topology = builder.build()
    return topology, builder.problems


def build_partial(
    documents: Sequence[SourceDocument], damages: Sequence[Damage]
) -> tuple[Topology | None, list[Problem], Gaps]:
    """Merge documents that may have had errors into the topology of their valid parts.

    `damages[i]` names the invalid parts of `documents[i]`. The topology is
    only for the rules and handler checks (it is never run); `Gaps` says what
    it lacks. None (and no gaps) when there are no documents.
    """
    if not documents:
        return None, [], NO_GAPS
    builder = _Builder(documents, damages)
    topology = builder.build(partial=True)
    return topology, builder.problems, builder.gaps()


def _renumber(path: str, binding_offset: int) -> str:
    """A file's `bindings[i]...` path as `bindings[i + offset]...` in the merged topology."""
    if binding_offset == 0 or not path.startswith("bindings["):
        return path
    end = path.index("]")
    return f"bindings[{int(path[9:end]) + binding_offset}{path[end:]}"


REPLY_ADDRESS_PREFIX = "runner.reply-to."
"""The private reply addresses of request-reply (`?wait=`, `ctx.request`): never declared."""


def _reserved(name: str, kind: str) -> bool:
    return name.startswith("__") or (
        name.startswith(("amq.", REPLY_ADDRESS_PREFIX)) and kind in ("exchange", "queue", "topic")
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _header_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field(path: str) -> str:
    parts = path.split(".")
    return ".".join(parts[2:]) if len(parts) > 2 else path
