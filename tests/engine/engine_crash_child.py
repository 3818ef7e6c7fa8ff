"""A child process doing exactly-once steps until its inputs run out (killed by tests).

    python -m tests.engine.engine_crash_child DATA_DIR

Consumes queue `in` and topic `src` (group `g`); each input becomes one step:
ack / commit + a publish through the fanout `fan` (-> queue `outq` and topic
`out`) + an append to topic `audit`; odd queue inputs only put a copy into
`outq` (a queues-only step). Prints `ready` once open, `step` after each
committed step (so the test can kill it mid-work), `done` at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord, Step
from runner.topology.model import (
    Binding,
    ConsumerGroup,
    Delivery,
    Exchange,
    ExchangeType,
    Queue,
    Topic,
    Topology,
)


def crash_topology() -> Topology:
    return Topology(
        topics=(("audit", Topic("audit", partitions=2)), ("out", Topic("out", partitions=2)),
                ("src", Topic("src", partitions=2))),
        exchanges=(("fan", Exchange("fan", ExchangeType.FANOUT)),),
        queues=(("in", Queue("in")), ("outq", Queue("outq"))),
        bindings=(Binding("fan", queue="outq"), Binding("fan", topic="out")),
        consumer_groups=(("g", ConsumerGroup("g", ("src",), delivery=Delivery.EXACTLY_ONCE)),),
    )


def queues_only(body: bytes) -> bool:
    """Odd queue inputs take the queues-only path (the broker's own step)."""
    return body.startswith(b"q-") and int(body[2:]) % 2 == 1


def outputs(body: bytes) -> Step:
    if queues_only(body):
        return Step(queue_puts=[("outq", [OutMessage(body=body)])])
    return Step(publishes=[("fan", [OutMessage(body=body, routing_key="r")])],
                appends=[("audit", [OutRecord(value=body, key=body)])])


def main(data_dir: Path) -> int:
    engine = Engine.open(crash_topology(), data_dir, fsync=FsyncPolicy.ALWAYS)
    engine.join("g", "member")
    print("ready", flush=True)
    while True:
        did = False
        for d in engine.pull("in", 1, lease_s=60.0, consumer_id="child"):
            step = outputs(d.body)
            step.acks.append(("in", d.delivery_id))
            engine.commit_step(step)
            print("step", flush=True)
            did = True
        for tp in engine.assignment("g", "member"):
            records, _ = engine.read(tp.topic, tp.partition, engine.position("g", tp),
                                     max_records=1)
            for r in records:
                step = outputs(r.value or b"")
                step.commits.append(("g", tp, r.offset + 1))
                engine.commit_step(step)
                print("step", flush=True)
                did = True
        if not did:
            engine.close()
            print("done", flush=True)
            return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
