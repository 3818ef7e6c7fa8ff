"""Child process for the crash tests: appends with fsync=always and prints every ack.

Usage: python crash_writer.py DIRECTORY SEED THREADS

Each acknowledged batch is printed as `first_offset count tag` after `append`
returned; the value of record i of the batch is `value_for(tag, i)`.
"""

from __future__ import annotations

import random
import sys
import threading
from pathlib import Path

from runner.clock import SystemClock
from runner.log.record import Fsync
from runner.log.segment import SegmentedLog


def value_for(tag: str, i: int) -> bytes:
    return (f"{tag}/{i}/".encode() * 20)[:150]


def main() -> None:
    directory, seed, threads = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    log = SegmentedLog(directory, fsync=Fsync.ALWAYS, clock=SystemClock(),
                       segment_bytes=32 * 1024, index_interval_bytes=512)
    out = threading.Lock()
    print("ready", flush=True)

    def work(t: int) -> None:
        rnd = random.Random(seed * 100 + t)
        n = 0
        while True:
            n += 1
            tag = f"{seed}-{t}-{n}"
            count = rnd.randint(1, 20)
            items = [(tag.encode(), value_for(tag, i), [("i", b"%d" % i)], 1000 + i)
                     for i in range(count)]
            first = log.append(items)
            with out:
                sys.stdout.write(f"{first} {count} {tag}\n")
                sys.stdout.flush()

    for t in range(threads):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
