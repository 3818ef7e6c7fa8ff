"""Limits that bound the worst case of one validation: entities, nodes, suggestions."""

from __future__ import annotations

from pathlib import Path

from runner.topology.load import MAX_ENTITIES, load
from runner.topology.suggest import Suggester, did_you_mean


def _queues(count: int, start: int = 0) -> str:
    return "".join(f"  q{i}: {{}}\n" for i in range(start, start + count))


def test_a_topology_with_too_many_entities_is_refused(tmp_path: Path) -> None:
    # spread over two files: the limit is for the whole topology
    half = MAX_ENTITIES // 2
    (tmp_path / "a.yaml").write_text("version: 1\nqueues:\n" + _queues(half))
    (tmp_path / "b.yaml").write_text(
        "version: 1\nqueues:\n" + _queues(half, half) + "bindings:\n  - {exchange: e}\n"
    )
    result = load(str(tmp_path))
    assert [(p.file, p.line, p.column, p.rule, p.message) for p in result.problems] == [
        (
            str(tmp_path),
            0,
            0,
            "too-many-entities",
            "topology is too large to validate: 20,001 entities (topics, exchanges, queues, "
            "bindings, dlq_policies, consumer groups and consumers); the limit is 20,000",
        )
    ]
    assert result.topology is None


def test_a_topology_at_the_entity_limit_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("version: 1\nqueues:\n" + _queues(MAX_ENTITIES - 1) + "  __q: {}\n")
    result = load(str(path))
    assert [(p.line, p.message) for p in result.problems] == [
        (
            MAX_ENTITIES + 2,
            'queue name "__q" is reserved: names starting with "__" belong to the engine',
        )
    ]


def test_suggestions_stop_when_the_budget_is_spent() -> None:
    suggest = Suggester(budget=5)
    names = ["orders", "emails", "events"]
    assert suggest("ordres", names) == '; did you mean "orders"?'
    assert suggest("emials", names) == ""  # 3 more comparisons than the 2 left
    assert suggest("evnets", ["events"]) == ""  # the budget stays spent
    assert did_you_mean("evnets", names) == '; did you mean "events"?'
