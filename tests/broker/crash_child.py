"""Child process for the crash tests: publishes and acks forever, printing what returned.

    python -m tests.broker.crash_child DATA_DIR START

`P n` is printed after the publish holding message n returned (fsync=always:
it is on disk), `D n` when message n was delivered (an ack may follow at any
moment), `A n` after the ack of message n returned.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runner.broker.broker import Broker
from runner.broker.message import Message
from runner.clock import SystemClock
from runner.topology.model import Queue


def main(data_dir: str, start: int) -> None:
    broker = Broker(Path(data_dir), fsync="always", clock=SystemClock(), segment_bytes=64 * 1024)
    broker.declare(queues=[Queue("jobs")])
    n = start
    out = sys.stdout
    while True:
        batch = [Message(b"%d" % i + b"." * 100, message_id=str(i)) for i in range(n, n + 7)]
        broker.publish_to_queue("jobs", batch)
        out.write("".join(f"P {i}\n" for i in range(n, n + 7)))
        out.flush()
        n += 7
        got = broker.pull("jobs", 3, consumer_id="child")
        out.write("".join(f"D {int(d.message_id or -1)}\n" for d in got))
        out.flush()
        broker.ack("jobs", [d.delivery_id for d in got])
        out.write("".join(f"A {int(d.message_id or -1)}\n" for d in got))
        out.flush()
        broker.tick()
        if n % 70 == 0:
            broker.compact(force=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
