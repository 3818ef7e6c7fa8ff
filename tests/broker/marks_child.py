"""Child process for the delivery-mark crash test: publish, pull, maybe ack, then wait.

    python -m tests.broker.marks_child DATA_DIR ACK_FIRST

Publishes 10 messages (fsync=always), pulls 4, acks the first ACK_FIRST of
them, prints `ready` and sleeps until SIGKILLed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from runner.broker.broker import Broker
from runner.broker.message import Message
from runner.clock import SystemClock
from runner.topology.model import Queue


def main(data_dir: str, ack_first: int) -> None:
    broker = Broker(Path(data_dir), fsync="always", clock=SystemClock())
    broker.declare(queues=[Queue("jobs")])
    broker.publish_to_queue("jobs", [Message(b"m%d" % i) for i in range(10)])
    got = broker.pull("jobs", 4, consumer_id="child")
    if ack_first:
        broker.ack("jobs", [d.delivery_id for d in got[:ack_first]])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
