"""Property tests: the loader returns problems for any input and never raises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.topology.load import LoadResult, load_text
from runner.topology.source import read_bytes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    (ROOT / "topologies" / "order-events.yaml").read_text(),
    (ROOT / "topologies" / "newsletter.yaml").read_text(),
    (Path(__file__).parent / "cases" / "good" / "every-key.yaml").read_text(),
]
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ENV = {"PARTS": "3", "EMPTY": ""}

# Words the loader knows, so random documents reach the schema, build and rules.
KEYS = [
    "version", "name", "topics", "exchanges", "queues", "bindings", "dlq_policies",
    "consumer_groups", "consumers", "partitions", "key", "retention", "time", "bytes",
    "cleanup_policy", "segment_bytes", "max_message_bytes", "type", "durable", "internal",
    "delete_retention",
    "alternate_exchange", "max_priority", "message_ttl", "max_length", "max_length_bytes",
    "overflow", "delivery_limit", "dead_letter", "exchange", "routing_key", "queue",
    "to_exchange", "topic", "match", "headers", "max_retries", "backoff", "initial",
    "multiplier", "max", "jitter", "dead_letter_queue", "no_retry_on", "alert", "max_depth",
    "max_age", "topics", "handler", "instances", "assignment", "offset_reset", "delivery",
    "dlq_policy", "concurrency", "prefetch", "timeout", "idempotency", "window", "q", "x",
    "orders", "__x", "amq.x",
]  # fmt: skip
WORDS = [
    "1", "0", "-1", "10", "24h", "7d", "1GiB", "forever", "unlimited", "direct", "fanout",
    "topic", "headers", "drop-head", "reject-publish-dlx", "compact", "delete", "all", "any",
    "earliest", "at-most-once", "exactly-once", "a.b:c", "orders.#", "orders.#x", "q", "x",
    "${PARTS}", "${NOPE}", "${EMPTY:-5}", "$${X}", "true", "yes", "~", "86400000", "1.5",
]  # fmt: skip


def _never_raises(result: LoadResult) -> None:
    assert isinstance(result, LoadResult)
    assert len(result.content_hash) == 64
    if any(p.is_error for p in result.problems):
        assert result.topology is None
    for problem in result.problems:
        assert problem.message and problem.line >= 0 and problem.column >= 0


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5),
    ),
    max_leaves=40,
)
documents = st.dictionaries(st.sampled_from(KEYS), trees, max_size=8).map(
    lambda d: {"version": 1, **d}
)


@SETTINGS
@given(st.binary(max_size=2000))
def test_random_bytes(raw: bytes) -> None:
    result = read_bytes(raw, file="fuzz.yaml", env=ENV)
    for problem in result.problems:
        assert problem.message


@SETTINGS
@given(st.text(st.characters(blacklist_categories=()), max_size=2000))
def test_random_text(text: str) -> None:
    _never_raises(load_text(text, filename="fuzz.yaml", env=ENV))


@SETTINGS
@given(trees)
def test_random_yaml_trees(tree: Any) -> None:
    text = yaml.safe_dump(tree, allow_unicode=True)
    _never_raises(load_text(text, filename="fuzz.yaml", env=ENV))


@SETTINGS
@given(documents, st.booleans())
def test_random_topology_shaped_documents(document: dict[str, Any], flow: bool) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True)
    _never_raises(load_text(text, filename="fuzz.yaml", env=ENV))


def _mutate(text: str, data: st.DataObject) -> str:
    lines = text.split("\n")
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        if not lines:
            lines = [""]
        index = data.draw(st.integers(min_value=0, max_value=len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "dup", "char", "insert", "indent", "word"]))
        line = lines[index]
        if action == "drop":
            del lines[index]
        elif action == "dup":
            lines.insert(index, line)
        elif action == "char" and line:
            at = data.draw(st.integers(min_value=0, max_value=len(line) - 1))
            new = data.draw(st.sampled_from(list(":-[]{}&*!|>'\"#%@`, \t$")))
            lines[index] = line[:at] + new + line[at + 1 :]
        elif action == "insert":
            at = data.draw(st.integers(min_value=0, max_value=len(line)))
            lines[index] = line[:at] + data.draw(st.text(max_size=5)) + line[at:]
        elif action == "indent":
            lines[index] = " " * data.draw(st.integers(min_value=0, max_value=6)) + line.lstrip()
        else:
            if ":" in line:
                head = line.split(":", 1)[0]
                lines[index] = f"{head}: {data.draw(st.sampled_from(WORDS))}"
    return "\n".join(lines)


@SETTINGS
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_examples(text: str, data: st.DataObject) -> None:
    _never_raises(load_text(_mutate(text, data), filename="fuzz.yaml", env=ENV))


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_-]{0,12}", fullmatch=True),
        st.fixed_dictionaries(
            {},
            optional={
                "partitions": st.integers(min_value=1, max_value=10000),
                "key": st.sampled_from(["id", "order.id"]),
                "retention": st.fixed_dictionaries(
                    {},
                    optional={
                        "time": st.sampled_from(["forever", "1ms", "30s", "1h30m", "2w"]),
                        "bytes": st.sampled_from(["unlimited", 0, 1048576, "1.5KB", "1TiB"]),
                    },
                ),
                "cleanup_policy": st.sampled_from(["delete", "compact", ["compact", "delete"]]),
                "segment_bytes": st.integers(min_value=1, max_value=2**40),
            },
        ),
        max_size=6,
    )
)
def test_valid_topics_always_build(topics: dict[str, Any]) -> None:
    text = yaml.safe_dump({"version": 1, "topics": topics})
    result = load_text(text, filename="topics.yaml", env={})
    assert [p.message for p in result.problems] == []
    assert result.topology is not None
    assert sorted(result.topology.topic_map()) == sorted(topics)
    for name, spec in topics.items():
        assert result.topology.topic_map()[name].partitions == spec.get("partitions", 1)


durations = st.builds(
    lambda n, unit: (f"{n}{unit}", n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]),
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from(["ms", "s", "m", "h", "d"]),
)
sizes = st.builds(
    lambda n, unit: (f"{n}{unit}", n * {"B": 1, "KB": 1000, "MiB": 1024**2, "GiB": 1024**3}[unit]),
    st.integers(min_value=0, max_value=4096),
    st.sampled_from(["B", "KB", "MiB", "GiB"]),
) | st.integers(min_value=0, max_value=2**40).map(lambda n: (n, n))
names = st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True).filter(
    lambda n: not n.startswith("amq.")
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        names,
        st.tuples(
            st.none() | st.integers(min_value=1, max_value=10),
            st.none() | durations,
            st.none() | sizes,
            st.none() | st.integers(min_value=0, max_value=10**6),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(min_value=1, max_value=64),
    durations.filter(lambda d: d[1] > 0),  # a zero timeout is an error
)
def test_what_is_written_is_what_is_built(
    queues: dict[str, tuple[Any, ...]], concurrency: int, timeout: tuple[str, float]
) -> None:
    spec: dict[str, Any] = {}
    for name, (priority, ttl, length_bytes, length, durable) in queues.items():
        entry: dict[str, Any] = {"durable": durable}
        if priority is not None:
            entry["max_priority"] = priority
        if ttl is not None:
            entry["message_ttl"] = ttl[0]
        if length_bytes is not None:
            entry["max_length_bytes"] = length_bytes[0]
        if length is not None:
            entry["max_length"] = length
        spec[name] = entry
    first = sorted(queues)[0]
    document = {
        "version": 1,
        "queues": spec,
        "dlq_policies": {"p": {"max_retries": 0}},
        "consumers": {
            "c": {
                "queue": first,
                "handler": "a.b:c",
                "concurrency": concurrency,
                "timeout": timeout[0],
                "dlq_policy": "p",
            }
        },
    }
    result = load_text(yaml.safe_dump(document), filename="gen.yaml", env={})
    assert [p.message for p in result.problems if p.is_error] == []
    topo = result.topology
    assert topo is not None
    built = topo.queue_map()
    for name, (priority, ttl, length_bytes, length, durable) in queues.items():
        queue = built[name]
        assert queue.durable is durable
        assert queue.max_priority == priority
        assert queue.message_ttl_s == (None if ttl is None else pytest.approx(ttl[1]))
        assert queue.max_length_bytes == (None if length_bytes is None else length_bytes[1])
        assert queue.max_length == length
    consumer = topo.consumer_map()["c"]
    assert (consumer.queue, consumer.concurrency, consumer.prefetch) == (
        first,
        concurrency,
        10 * concurrency,
    )
    assert consumer.timeout_s == pytest.approx(timeout[1])
