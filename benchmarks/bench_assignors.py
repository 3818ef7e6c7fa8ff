"""Benchmark of the sticky assignor (runner.log.assignors.assign_sticky).

Run: .venv/bin/python benchmarks/bench_assignors.py [--quick]

Prints, median of 3 runs each, the time of:

* a fresh sticky assignment (no previous owners) of 100,000 partitions to
  1,000 members, in one topic and spread over 100 topics of 1,000 partitions
  (issue 8 asks for this number; Kafka's own test allows 30 s for 1M x 2,000);
* 20,000 partitions x 2,000 members (the size issue 8 measured at 7.6 s before);
* a rebalance of the 100,000 x 1,000 case when one member joins (stickiness
  on: every member first keeps what it may);

and checks each result: every partition exactly once, counts within one per
topic and overall. `--quick` runs a tenth of each size once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.log.assignors import Assignment, assign_sticky  # noqa: E402


def _check(got: Assignment, layout: dict[str, int]) -> None:
    total = sum(len(v) for v in got.values())
    assert total == sum(layout.values()) == len({tp for v in got.values() for tp in v})
    counts = [len(v) for v in got.values()]
    assert max(counts) - min(counts) <= 1
    per_topic: dict[str, dict[str, int]] = {}
    for m, tps in got.items():
        for tp in tps:
            per_topic.setdefault(tp.topic, dict.fromkeys(got, 0))[m] += 1
    for per in per_topic.values():
        assert max(per.values()) - min(per.values()) <= 1


def _median(fn: Callable[[], Assignment], repeats: int) -> tuple[float, Assignment]:
    times: list[float] = []
    got: Assignment = {}
    for _ in range(repeats):
        start = time.perf_counter()
        got = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of each size, once")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    repeats = 1 if args.quick else 3
    members = [f"consumer-{i:05d}" for i in range(1000 // scale)]
    cases = [
        ("fresh, 100,000 partitions (1 topic) x 1,000 members",
         {"t": 100_000 // scale}, members),
        ("fresh, 100,000 partitions (100 topics) x 1,000 members",
         {f"t{i:03d}": 1000 // scale for i in range(100)}, members),
        ("fresh, 20,000 partitions (1 topic) x 2,000 members",
         {"t": 20_000 // scale}, [f"c{i}" for i in range(2000 // scale)]),
    ]
    print(f"sticky assignor, median of {repeats}:")
    for label, layout, who in cases:
        took, got = _median(lambda layout=layout, who=who: assign_sticky(who, layout, {}),
                            repeats)
        _check(got, layout)
        print(f"  {label}: {took:.3f} s")
    layout = {f"t{i:03d}": 1000 // scale for i in range(100)}
    before = assign_sticky(members, layout, {})
    took, after = _median(lambda: assign_sticky([*members, "joiner"], layout, before), repeats)
    _check(after, layout)
    moved = sum(len(set(after[m]) - set(before[m])) for m in members)
    print(f"  one member joins 100,000 partitions (100 topics) x 1,000 members: {took:.3f} s, "
          f"{len(after['joiner'])} partitions moved to it, {moved} moved between the others")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
