"""Partial topologies: locating the entity of a path, and what a damaged file leaves out."""

from __future__ import annotations

from runner.topology.partial import WHOLE, Damage, Gaps, covered, locate

DATA = {
    "queues": {"orders": {}, "orders.dlq": {}},
    "bindings": [{}, {}],
}


def test_locate_prefers_the_longest_dotted_name() -> None:
    assert locate("queues.orders.dlq.max_priority", DATA) == ("queues.orders.dlq", "max_priority")
    assert locate("queues.orders.dead_letter.exchange", DATA) == ("queues.orders", "dead_letter")
    assert locate("queues.orders.dlq", DATA) == ("queues.orders.dlq", WHOLE)
    assert locate("bindings[1].headers.x", DATA) == ("bindings[1]", "headers")
    assert locate("consumer_groups.g.topics[0]", DATA) == ("consumer_groups.g", "topics")
    assert locate("queues", DATA) is None
    assert locate("version", DATA) is None


def test_damage_groups_paths_into_sections_entities_and_fields() -> None:
    damage = Damage.of(["queues.orders.dlq.durable", "bindings", "name", "bindings[0]"], DATA)
    assert damage.sections == {"bindings"}
    assert damage.top == {"name"}
    assert damage.fields("queues.orders.dlq") == {"durable"}
    assert damage.fields("bindings[0]") == {WHOLE}
    assert damage.fields("queues.orders") is None


def test_gaps_cover_paths_inside_invalid_values() -> None:
    gaps = Gaps(invalid=frozenset({"queues.q.dead_letter"}), tainted=frozenset({"queues.q"}))
    assert gaps.covers("queues.q.dead_letter.exchange")
    assert not gaps.covers("queues.q.overflow")
    assert not gaps.sound("queues.q") and gaps.sound("queues.r")
    assert not gaps.complete
    assert covered("a[2].b", {"a[2]"}) and not covered("a[3]", {"a[2]"})
