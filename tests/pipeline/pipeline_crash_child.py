"""A child process running the Pipeline with exactly-once handlers (killed by tests).

    python -m tests.pipeline.pipeline_crash_child DATA_DIR

Queue `in` -> consumer `c` and topic `src` -> group `g` (2 members), both
exactly-once, both forwarding each input through `ctx.publish("fan", ...)`
(-> queue `outq` and topic `out`) and `ctx.append("audit", ...)`. Prints
`ready` once started and `done` when every input is handled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from pathlib import Path
from typing import Any

from runner.clock import SystemClock
from runner.engine import Engine, FsyncPolicy
from runner.engine.embedded import EmbeddedBackend
from runner.pipeline import Pipeline
from runner.topology.model import (
    Binding,
    Consumer,
    ConsumerGroup,
    Delivery,
    Exchange,
    ExchangeType,
    Queue,
    Topic,
    Topology,
)

HANDLER = "tests.pipeline.pipeline_crash_child:forward"


def forward(msg: Any, ctx: Any) -> None:
    ctx.publish("fan", "r", msg.payload)
    ctx.append("audit", msg.payload, key=msg.payload)


def crash_topology() -> Topology:
    return Topology(
        topics=(("audit", Topic("audit", partitions=2)), ("out", Topic("out", partitions=2)),
                ("src", Topic("src", partitions=3))),
        exchanges=(("fan", Exchange("fan", ExchangeType.FANOUT)),),
        queues=(("in", Queue("in")), ("outq", Queue("outq"))),
        bindings=(Binding("fan", queue="outq"), Binding("fan", topic="out")),
        consumers=(("c", Consumer("c", "in", HANDLER, concurrency=2, prefetch=4,
                                  delivery=Delivery.EXACTLY_ONCE)),),
        consumer_groups=(("g", ConsumerGroup("g", ("src",), handler=HANDLER, instances=2,
                                             delivery=Delivery.EXACTLY_ONCE)),),
    )


async def run(data_dir: Path) -> None:
    clock = SystemClock()
    engine = Engine.open(crash_topology(), data_dir, fsync=FsyncPolicy.ALWAYS, clock=clock)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pipeline = Pipeline(EmbeddedBackend(engine), engine.topology, data_dir=data_dir,
                            clock=clock, executor=pool, instance_id="child")
        await pipeline.start()
        print("ready", flush=True)
        while True:
            engine.tick()
            info = engine.queue_info("in")
            lag = sum(p.lag for p in engine.group_info("g").partitions)
            if info.ready == info.unacked == 0 and lag == 0:
                break
            await asyncio.sleep(0.02)
        await pipeline.drain(1.0)
    engine.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(run(Path(sys.argv[1])))
