"""A dry run of one message: where it would land and what would happen to it.

`dry_run(topology, exchange=..., routing_key=..., headers=...)` (or
`topic=..., key=...`) answers with plain JSON-able data, built from the
engine's own code only: the exchanges the message passes come from the
engine's router (`RouteExplainer.explain`), where it lands (queues, topic
partitions by the murmur2 partitioner) from publishing it on a `Simulation`,
and, with `fail=N`, each handling consumer's or group's timeline from a
simulation where that handler fails N times: each failure, the retry delay
the DLQ policy gives, and the dead letter (destination and its
`x-dead-letter` header) the engine writes. Handlers are stand-ins (nothing of
the user's code runs); nothing is persisted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.engine import DEAD_LETTER_HEADER, OutMessage, OutRecord
from runner.pipeline.message import encode_body
from runner.simulate.simulation import Landing, Simulation, Stand
from runner.topology.model import DEFAULT_DLQ_POLICY, DlqPolicy, ExponentialBackoff, Topology
from runner.topology.units import format_duration

HORIZON_S = 365 * 86400.0


def _policy(topology: Topology, name: str | None) -> dict[str, Any]:
    policy: DlqPolicy = topology.policy_map().get(name, DEFAULT_DLQ_POLICY) if name else (
        DEFAULT_DLQ_POLICY)
    backoff: Any
    if isinstance(policy.backoff, ExponentialBackoff):
        b = policy.backoff
        backoff = {"initial": format_duration(b.initial_s), "multiplier": b.multiplier,
                   "max": format_duration(b.max_s), "jitter": b.jitter}
    else:
        backoff = [format_duration(s) for s in policy.backoff]
    dlq = policy.dead_letter_queue
    return {
        "name": name, "max_retries": policy.max_retries, "backoff": backoff,
        "no_retry_on": list(policy.no_retry_on),
        "dead_letter_queue": None if dlq is None else {
            "kind": "topic" if dlq in topology.topic_map() else "queue", "name": dlq},
    }


def _handlers(topology: Topology, kind: str, name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if kind == "queue":
        for cname, c in topology.consumers:
            if c.queue == name:
                out.append({"kind": "consumer", "name": cname, "handler": c.handler,
                            "delivery": c.delivery.value, "concurrency": c.concurrency,
                            "dlq_policy": _policy(topology, c.dlq_policy)})
    else:
        for gname, g in topology.consumer_groups:
            if name in g.topics:
                out.append({"kind": "group", "name": gname, "handler": g.handler,
                            "delivery": g.delivery.value, "instances": g.instances,
                            "dlq_policy": None if g.handler is None
                            else _policy(topology, g.dlq_policy)})
    return out


def _queue_settings(topology: Topology, name: str) -> dict[str, Any]:
    q = topology.queue_map()[name]
    out: dict[str, Any] = {}
    if q.max_priority is not None:
        out["max_priority"] = q.max_priority
    if q.message_ttl_s is not None:
        out["message_ttl"] = format_duration(q.message_ttl_s)
    if q.max_length is not None:
        out["max_length"] = q.max_length
    if q.max_length_bytes is not None:
        out["max_length_bytes"] = q.max_length_bytes
    if q.max_length is not None or q.max_length_bytes is not None:
        out["overflow"] = q.overflow.value
    if q.delivery_limit is not None:
        out["delivery_limit"] = q.delivery_limit
    if q.dead_letter is not None:
        out["dead_letter"] = {"exchange": q.dead_letter.exchange,
                              "routing_key": q.dead_letter.routing_key}
    return out


def _dead_letters(sim: Simulation) -> list[dict[str, Any]]:
    """Every dead letter the simulation holds, with where it is."""
    out: list[dict[str, Any]] = []
    for name, _ in sim.topology.queues:
        for m in sim.queue_messages(name):
            if DEAD_LETTER_HEADER in m.headers:
                out.append({"kind": "queue", "name": name, "routing_key": m.routing_key,
                            "header": m.headers[DEAD_LETTER_HEADER]})
    for name, _ in sim.topology.topics:
        for r in sim.topic_records(name):
            if DEAD_LETTER_HEADER in r.headers:
                out.append({"kind": "topic", "name": name, "partition": r.partition,
                            "header": r.headers[DEAD_LETTER_HEADER]})
    return out


def _send(sim: Simulation, spec: Mapping[str, Any]) -> Landing:
    if spec.get("topic") is not None:
        key = spec.get("key")
        value = None if spec.get("body") is None else encode_body(spec["body"])[0]
        return sim.append(str(spec["topic"]), OutRecord(
            value=value, key=None if key is None else str(key).encode(),
            headers=dict(spec.get("headers") or {})))
    body, ctype = encode_body(spec.get("body"))
    return sim.publish(str(spec["exchange"]), OutMessage(
        body=body, routing_key=str(spec.get("routing_key") or ""),
        headers=dict(spec.get("headers") or {}), content_type=ctype))


def _timeline(topology: Topology, spec: Mapping[str, Any], worker: str,
              fail: int, start_time: float) -> dict[str, Any]:
    """Publish once more on a simulation where only `worker` fails `fail` times."""
    stands = {worker: Stand(real=False, fail=fail)}
    sim = Simulation(topology, stands=stands, default=lambda _: Stand(real=False),
                     start_time=start_time)
    try:
        _send(sim, spec)
        sim.run(horizon_s=HORIZON_S)
        events: list[dict[str, Any]] = []
        calls = [c for c in sim.log.calls if c.worker == worker]
        fates = [f for f in sim.log.fates if f.worker == worker]
        for i, call in enumerate(calls):
            event: dict[str, Any] = {"at": call.at_s, "attempt": i + 1}
            if call.error_type is None:
                event["result"] = "succeeded"
            else:
                event["result"] = "failed"
                event["error"] = f"{call.error_type}: {call.error}"
                fate = fates[i] if i < len(fates) else None
                if fate is not None and fate.retry:
                    event["retry_in"] = fate.delay_s
                elif fate is not None:
                    event["gave_up"] = fate.reason
            events.append(event)
        dead = [d for d in _dead_letters(sim)
                if d["header"].get("consumer_id", "").startswith(f"{worker}-")]
        gave_up = any(not f.retry for f in fates)
        outcome = ("succeeded" if calls and calls[-1].error_type is None
                   else "dead-lettered" if dead else "dropped" if gave_up else "pending")
        return {"events": events, "outcome": outcome, "dead_letters": dead}
    finally:
        sim.close()


def dry_run(
    topology: Topology, *, exchange: str | None = None, routing_key: str = "",
    headers: Mapping[str, Any] | None = None, topic: str | None = None,
    key: str | None = None, body: Any = None, fail: int | None = None,
    start_time: float = 1_700_000_000.0,
) -> dict[str, Any]:
    """Where the message lands and what happens to it (see the module). Raises the
    engine's errors (NotFound, Forbidden) for an exchange or topic it cannot take."""
    spec = {"exchange": exchange, "routing_key": routing_key, "headers": dict(headers or {}),
            "topic": topic, "key": key, "body": body}
    path: list[dict[str, Any]] = []
    sim = Simulation(topology, default=lambda _: Stand(real=False), start_time=start_time)
    try:
        if exchange is not None:
            bindings = topology.bindings
            for hop in sim.backend.explain(exchange, routing_key, headers or {}):
                path.append({
                    "exchange": hop.exchange, "type": hop.type, "via": hop.via,
                    "from": hop.parent,
                    "matched": [{"kind": kind, "name": name, "bindings": [
                        b.routing_key for b in bindings
                        if b.exchange == hop.exchange and b.destination_kind == kind
                        and b.destination == name]} for kind, name in hop.matched],
                })
        landing = _send(sim, spec)
        sim.run(horizon_s=HORIZON_S)
        settled = _dead_letters(sim)
    finally:
        sim.close()
    destinations: list[dict[str, Any]] = []
    for queue in landing.queues:
        expired = [d for d in settled if d["header"].get("original_queue") == queue
                   and d["header"].get("reason") == "expired"]
        dest: dict[str, Any] = {"kind": "queue", "name": queue,
                                "settings": _queue_settings(topology, queue),
                                "handlers": _handlers(topology, "queue", queue)}
        if expired:
            dest["expires_into"] = [{"kind": d["kind"], "name": d["name"]} for d in expired]
        destinations.append(dest)
    topics = topology.topic_map()
    for name, partition in landing.partitions:
        t = topics[name]
        destinations.append({"kind": "topic", "name": name, "partition": partition,
                             "partitions": t.partitions,
                             "key": key if topic is not None else None,
                             "key_field": None if topic is not None else t.key,
                             "keyed": (key is not None if topic is not None
                                       else t.key is not None and isinstance(body, dict)
                                       and body.get(t.key) is not None),
                             "handlers": _handlers(topology, "topic", name)})
    if fail is not None:
        for dest in destinations:
            for h in dest["handlers"]:
                if h["handler"] is not None:
                    h["timeline"] = _timeline(topology, spec, h["name"], fail, start_time)
    return {"input": {k: v for k, v in spec.items() if v not in (None, {}, "")}
            | ({"routing_key": routing_key} if exchange is not None else {}),
            "path": path, "destinations": destinations, "nowhere": landing.nowhere}
