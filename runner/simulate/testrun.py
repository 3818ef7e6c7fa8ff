"""Running topology test cases: one `Simulation` per case, expectations checked.

`run_case(topology, case)` sends the case's message or record through a fresh
simulation of the topology (real routing, real handlers with their real
context, manual clock), lets it settle, and compares what happened with the
case's `expect` block. Every mismatch is one sentence in `CaseResult.failures`;
a case that could not run at all (a handler that does not import, an
exchange the topology does not have) has `error`. Any handler error the case
did not expect -- including outputs the engine refused, such as a publish to
an exchange the topology does not declare -- is a failure too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runner.engine import DEAD_LETTER_HEADER, OutMessage, OutRecord, QueueDelivery, Record
from runner.errors import EngineError, HandlerImportError
from runner.pipeline.message import encode_body, encode_key
from runner.simulate.simulation import Landing, Simulation, Stand, body_value
from runner.topology.model import Topology
from runner.topology.testcases import TestCase
from runner.topology.units import format_duration, parse_duration


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The outcome of one case."""

    file: str
    name: str
    line: int
    failures: tuple[str, ...] = ()
    error: str | None = None  # the case could not run
    calls: int = 0
    simulated_s: float = 0.0
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None


def _show(value: Any) -> str:
    import json

    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def _message(spec: Mapping[str, Any]) -> OutMessage:
    body, ctype = encode_body(spec.get("body"))
    ttl = spec.get("ttl")
    return OutMessage(
        body=body, routing_key=str(spec.get("routing_key", spec.get("queue", ""))),
        headers=dict(spec.get("headers") or {}), priority=spec.get("priority"),
        ttl_s=parse_duration(ttl) if ttl else None, message_id=spec.get("message_id"),
        content_type=ctype,
    )


def _record(spec: Mapping[str, Any]) -> OutRecord:
    value = spec.get("value")
    return OutRecord(
        value=None if value is None else encode_body(value)[0], key=encode_key(spec.get("key")),
        headers=dict(spec.get("headers") or {}), partition=spec.get("partition"),
    )


def send(sim: Simulation, case: TestCase) -> Landing:
    """Put the case's message or record in (the engine's errors pass through)."""
    if case.publish is not None:
        spec = case.publish
        if "queue" in spec:
            return sim.publish_to_queue(str(spec["queue"]), _message(spec))
        return sim.publish(str(spec["exchange"]), _message(spec))
    assert case.append is not None
    return sim.append(str(case.append["topic"]), _record(case.append))


# ---------------------------------------------------------------- matching


def _subset(want: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    return [f"{k} is {_show(got.get(k))}, expected {_show(v)}"
            for k, v in want.items() if got.get(k) != v]


def _death_problems(want: Mapping[str, Any], death: Any) -> list[str]:
    if not isinstance(death, Mapping):
        return ["it has no x-dead-letter header"]
    flat = dict(death)
    error = death.get("error")
    if isinstance(error, Mapping):
        flat["error_type"] = error.get("type")
        flat["error_message"] = error.get("message")
    return [f"x-dead-letter {p}" for p in _subset(want, flat)]


def _message_problems(want: Mapping[str, Any], got: QueueDelivery | Record) -> list[str]:
    out: list[str] = []
    if isinstance(got, Record):
        fields: dict[str, Any] = {
            "body": body_value(got.value), "partition": got.partition,
            "key": None if got.key is None else got.key.decode(errors="replace"),
        }
    else:
        fields = {"body": body_value(got.body), "routing_key": got.routing_key,
                  "priority": got.priority}
    for name in ("body", "routing_key", "priority", "key", "partition"):
        if name in want and fields.get(name) != want[name]:
            out.append(f"{name} is {_show(fields.get(name))}, expected {_show(want[name])}")
    if "headers" in want:
        out.extend(f"header {p}" for p in _subset(want["headers"], got.headers))
    if "dead_letter" in want:
        out.extend(_death_problems(want["dead_letter"], got.headers.get(DEAD_LETTER_HEADER)))
    return out


def _contents_problems(
    kind: str, name: str, want: int | Sequence[Mapping[str, Any]],
    got: Sequence[QueueDelivery | Record],
) -> list[str]:
    noun = "message" if kind == "queue" else "record"
    if isinstance(want, int):
        if len(got) != want:
            return [f"{kind} {name} holds {len(got)} {noun}(s), expected {want}"]
        return []
    if len(got) != len(want):
        return [f"{kind} {name} holds {len(got)} {noun}(s), expected {len(want)}"]
    out: list[str] = []
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        out.extend(f"{kind} {name} {noun} {i + 1}: {p}" for p in _message_problems(w, g))
    return out


def _output_problems(sim: Simulation, want: Sequence[Mapping[str, Any]]) -> list[str]:
    staged = [o for c in sim.log.calls if c.error_type is None for o in c.outputs]
    shown = ", ".join(f"{o.kind} {o.target}" + (f" {o.key!r}" if o.key else "")
                      for o in staged) or "nothing"
    if len(staged) != len(want):
        return [f"handlers published {len(staged)} time(s) ({shown}), expected {len(want)}"]
    out = []
    for i, (w, o) in enumerate(zip(want, staged, strict=True)):
        kind = "publish" if "exchange" in w else "append"
        target = w.get("exchange", w.get("topic"))
        if (o.kind, o.target) != (kind, target):
            out.append(f"output {i + 1} is {o.kind} {o.target}, expected {kind} {target}")
            continue
        key_name = "routing_key" if kind == "publish" else "key"
        if key_name in w and o.key != w[key_name]:
            out.append(f"output {i + 1} {key_name} is {_show(o.key)}, "
                       f"expected {_show(w[key_name])}")
        if "body" in w and o.body != w["body"]:
            out.append(f"output {i + 1} body is {_show(o.body)}, expected {_show(w['body'])}")
        if "headers" in w:
            out.extend(f"output {i + 1} header {p}" for p in _subset(w["headers"], o.headers))
    return out


def _dead_letter_problems(sim: Simulation, want: Mapping[str, Any]) -> list[str]:
    got: list[QueueDelivery] | list[Record]
    if "queue" in want:
        where, got = f"queue {want['queue']}", sim.queue_messages(str(want["queue"]))
    else:
        where, got = f"topic {want['topic']}", sim.topic_records(str(want["topic"]))
    dead = [g for g in got if DEAD_LETTER_HEADER in g.headers]
    if not dead:
        return [f"no dead letter in {where} ({len(got)} message(s) there)"]
    fields = {k: v for k, v in want.items() if k not in ("queue", "topic", "after")}
    problems = _death_problems(fields, dead[-1].headers.get(DEAD_LETTER_HEADER))
    if "after" in want:
        gave_up = [f for f in sim.log.fates if not f.retry]
        expected = parse_duration(str(want["after"])) or 0.0
        if not gave_up:
            problems.append("no handler gave up, so there is no time to compare with "
                            f"`after: {want['after']}`")
        elif abs(gave_up[-1].at_s - expected) > 1e-6:
            problems.append(f"dead-lettered after {format_duration(gave_up[-1].at_s)}, "
                            f"expected after {want['after']}")
    return [f"dead letter in {where}: {p}" for p in problems]


def _unexpected_errors(sim: Simulation, case: TestCase) -> list[str]:
    expect = case.expect
    allowed = set(expect.get("errors") or ())
    dead = expect.get("dead_letter") or {}
    if "error_type" in dead:
        allowed.add(str(dead["error_type"]))
    out = []
    for f in sim.log.fates:
        if f.injected or f.error_type in allowed or f.error_type.rpartition(".")[2] in allowed:
            continue
        if f.engine_error:
            out.append(f"{f.worker}: the engine refused the handler's outputs: {f.error}")
        else:
            out.append(f"{f.worker}: unexpected handler error {f.error_type}: {f.error}")
    return list(dict.fromkeys(out))


def check(sim: Simulation, case: TestCase, landing: Landing, settled: bool) -> list[str]:
    """Every way the settled simulation differs from `case.expect`."""
    expect = case.expect
    out: list[str] = []
    if not settled:
        out.append(f"still busy after {format_duration(case.run_for_s)} of simulated time "
                   "(a retry or TTL loop?); raise `run_for` if that is meant")
    if "routed" in expect:
        got = sorted([*landing.queues, *dict.fromkeys(t for t, _ in landing.partitions)])
        want = sorted(expect["routed"])
        if got != want:
            out.append(f"routed to {_show(got)}, expected {_show(want)}")
    for topic, partition in (expect.get("partitions") or {}).items():
        parts = [p for t, p in landing.partitions if t == topic]
        if parts != [partition]:
            got_text = "nothing" if not parts else ", ".join(map(str, parts))
            out.append(f"topic {topic}: partition {got_text}, expected {partition}")
    for worker, n in (expect.get("calls") or {}).items():
        got_n = len([c for c in sim.log.calls if c.worker == worker])
        if got_n != n:
            out.append(f"{worker} was called {got_n} time(s), expected {n}")
    if "published" in expect:
        out.extend(_output_problems(sim, expect["published"]))
    for queue, want in (expect.get("queues") or {}).items():
        out.extend(_contents_problems("queue", queue, want, sim.queue_messages(queue)))
    for topic, want in (expect.get("topics") or {}).items():
        out.extend(_contents_problems("topic", topic, want, sim.topic_records(topic)))
    if "dead_letter" in expect:
        out.extend(_dead_letter_problems(sim, expect["dead_letter"]))
    out.extend(_unexpected_errors(sim, case))
    return out


def _names(topology: Topology) -> set[str]:
    return ({n for n, _ in topology.consumers}
            | {n for n, g in topology.consumer_groups if g.handler is not None})


def run_case(topology: Topology, case: TestCase, *, file: str) -> CaseResult:
    """Run one case on a fresh simulation of `topology`."""
    started = time.perf_counter()

    def result(failures: Sequence[str] = (), error: str | None = None,
               sim: Simulation | None = None) -> CaseResult:
        return CaseResult(file, case.name, case.line, tuple(failures), error,
                          len(sim.log.calls) if sim else 0, sim.now() if sim else 0.0,
                          time.perf_counter() - started)

    unknown = sorted(set(case.fail) - _names(topology))
    if unknown:
        return result(error=f"`fail` names {', '.join(unknown)}: no consumer or handled "
                            "group of the topology has that name")
    try:
        stands = {name: Stand(None, f.times, f.error, f.message) for name, f in case.fail.items()}
        sim = Simulation.open(topology, stands=stands)
    except HandlerImportError as exc:
        return result(error=str(exc))
    try:
        try:
            landing = send(sim, case)
        except EngineError as exc:
            return result(error=f"the message was refused: {exc}", sim=sim)
        settled = sim.run(horizon_s=case.run_for_s)
        return result(check(sim, case, landing, settled), sim=sim)
    finally:
        sim.close()
