"""Child process for the exactly-once crash test: a loop of commit_step calls.

Usage: python step_writer.py DATA_DIR

Each step commits group `g` one record further on `in/0` and appends the
record's index to `out`; after `commit_step` returned it prints the index.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runner.clock import SystemClock
from runner.log.partition import TopicPartition
from runner.log.record import Fsync
from runner.log.store import AppendRecord, Store
from runner.topology.model import ConsumerGroup, Topic

TOPICS = {"in": Topic("in"), "out": Topic("out", partitions=2)}
GROUPS = {"g": ConsumerGroup("g", ("in",))}
TP = TopicPartition("in", 0)


def main() -> None:
    store = Store(Path(sys.argv[1]), fsync=Fsync.ALWAYS, clock=SystemClock())
    store.apply(TOPICS, GROUPS)
    if store.log_end(TP) == 0:
        store.append("in", [AppendRecord(b"x")] * 100_000)
    print("ready", flush=True)
    while True:
        i = store.groups.position("g", TP)
        store.commit_step({("g", TP): i + 1},
                          [("out", [AppendRecord(b"%d" % i, partition=i % 2),
                                    AppendRecord(b"%d" % i, partition=(i + 1) % 2)])])
        sys.stdout.write(f"{i}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
