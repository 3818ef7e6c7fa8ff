"""Benchmark: full validation of a large topology, beside its floor.

Generates a topology with 1,000 queues, 1,000 bindings and 200 topics (plus
exchanges, consumers, consumer groups and DLQ policies referencing them,
including dead-letter exchanges so the cycle search has work), writes it to a
temporary file and times, median of N runs:

    floor      yaml.load with the C SafeLoader (plain parse, no positions)
    load()     read + positions + schema + build + semantic rules
    rules      runner.topology.rules.check on the built topology alone

and prints total milliseconds, microseconds per entity and the ratio to the
floor. Target: load() well under 1 s.

    .venv/bin/python benchmarks/bench_validate.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from runner.topology.load import load
from runner.topology.rules import check


def generate(queues: int = 1000, bindings: int = 1000, topics: int = 200) -> tuple[str, int]:
    """YAML text of a large valid topology, and how many entities it has."""
    exchanges = 50
    lines = ["version: 1", "name: bench", "topics:"]
    for t in range(topics):
        lines.append(f"  events-{t}: {{partitions: {1 + t % 12}, retention: {{time: 7d}}}}")
    lines.append("exchanges:")
    for e in range(exchanges):
        kind = ("topic", "direct", "fanout", "headers")[e % 4]
        lines.append(f"  ex.{e}: {{type: {kind}}}")
    lines.append("  dlx: {type: fanout}")
    lines.append("queues:")
    for q in range(queues):
        extra = ", message_ttl: 1h" if q % 10 == 0 else ""
        # every third queue dead-letters back into the routing mesh: work for the cycle search
        dlx = f"ex.{4 * (q % 12) + (q // 12) % 2}" if q % 3 == 0 else "dlx"  # topic or direct
        lines.append(f"  q.{q}: {{max_priority: 5, dead_letter: {{exchange: {dlx}}}{extra}}}")
    lines.append("  parking: {}")
    lines.append("bindings:")
    for b in range(bindings):
        e = b % exchanges
        kind = ("topic", "direct", "fanout", "headers")[e % 4]
        dest = f"topic: events-{b % topics}" if b % 5 == 4 else f"queue: q.{b % queues}"
        if kind == "topic":
            opts = f', routing_key: "orders.{b}.#"'
        elif kind == "direct":
            opts = f", routing_key: key-{b}"
        elif kind == "headers":
            opts = f", headers: {{n: {b}}}"
        else:
            opts = ""
        lines.append(f"  - {{exchange: ex.{e}, {dest}{opts}}}")
    lines.append("  - {exchange: dlx, queue: parking}")
    lines.append("dlq_policies:")
    for p in range(5):
        lines.append(f"  policy-{p}: {{max_retries: {p + 1}, dead_letter_queue: parking}}")
    lines.append("consumer_groups:")
    for g in range(100):
        lines.append(
            f"  group-{g}: {{topics: [events-{g}, events-{g + 100}], handler: 'app.g:run', "
            f"dlq_policy: policy-{g % 5}}}"
        )
    lines.append("consumers:")
    for c in range(200):
        lines.append(f"  consumer-{c}: {{queue: q.{c}, handler: 'app.c:run'}}")
    entities = topics + exchanges + 1 + queues + 1 + bindings + 1 + 5 + 100 + 200
    return "\n".join(lines) + "\n", entities


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs instead of 5")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 5
    text, entities = generate()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(text)
        result = load(str(path))
        if result.topology is None or result.errors:
            for p in result.errors[:10]:
                print(f"{p.file}:{p.line}:{p.column}: {p.message}")
            return 1
        topology = result.topology
        floor = median_ms(lambda: yaml.load(path.read_text(), Loader=loader), repeats)
        full = median_ms(lambda: load(str(path)), repeats)
        rules = median_ms(lambda: check(topology), repeats)
    print(f"topology: {entities} entities, {len(text) // 1024} KiB of YAML, median of {repeats}")
    print(f"{'step':<34}{'total ms':>10}{'us/entity':>11}{'x floor':>9}")
    for name, ms in (
        ("floor: yaml CSafeLoader parse", floor),
        ("load(): full validation", full),
        ("rules.check() alone", rules),
    ):
        print(f"{name:<34}{ms:>10.1f}{ms * 1000 / entities:>11.1f}{ms / floor:>9.2f}")
    print(f"warnings reported (possible dead-letter cycles): {len(result.warnings)}")
    print("target: load() under 1000 ms ->", "ok" if full < 1000 else "TOO SLOW")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
