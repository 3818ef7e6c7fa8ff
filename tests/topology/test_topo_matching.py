"""One topic matcher (issue 8, one owner per rule).

`runner.topology.matching.topic_matches` is the reference; the broker's trie
is a fast path that must agree with it (a property test below, and the real
embedded engine's routes), and the validator's cycle check calls it. The
table below is what RabbitMQ 3.10 routed (a topic exchange, one queue bound
per pattern, every key published once; probed on 127.0.0.1:5672 with pika
while writing this test).
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from runner.broker.routing import TopicTrie
from runner.topology.matching import topic_matches

KEYS = ['', 'a', 'a.', '.a', '.', '..', 'a.b', 'a..b', 'a.x.b', 'a.b.c', 'b', 'x.a', 'a.a']

# pattern -> the keys RabbitMQ delivered to the queue bound with it
RABBITMQ = {
    '': [''],
    '#': ['', 'a', 'a.', '.a', '.', '..', 'a.b', 'a..b', 'a.x.b', 'a.b.c', 'b', 'x.a', 'a.a'],
    '*': ['a', 'b'],
    'a': ['a'],
    'a.#': ['a', 'a.', 'a.b', 'a..b', 'a.x.b', 'a.b.c', 'a.a'],
    'a.*': ['a.', 'a.b', 'a.a'],
    '#.a': ['a', '.a', 'x.a', 'a.a'],
    'a.#.#': ['a', 'a.', 'a.b', 'a..b', 'a.x.b', 'a.b.c', 'a.a'],
    '#.#': ['', 'a', 'a.', '.a', '.', '..', 'a.b', 'a..b', 'a.x.b', 'a.b.c', 'b', 'x.a', 'a.a'],
    '*.#': ['a', 'a.', '.a', '.', '..', 'a.b', 'a..b', 'a.x.b', 'a.b.c', 'b', 'x.a', 'a.a'],
    '#.*': ['a', 'a.', '.a', '.', '..', 'a.b', 'a..b', 'a.x.b', 'a.b.c', 'b', 'x.a', 'a.a'],
    'a.*.b': ['a..b', 'a.x.b'],
    'a.#.b': ['a.b', 'a..b', 'a.x.b'],
    '*.*': ['a.', '.a', '.', 'a.b', 'x.a', 'a.a'],
    '#.b': ['a.b', 'a..b', 'a.x.b', 'b'],
    'a.': ['a.'],
    '.a': ['.a'],
    '*.': ['a.', '.'],
    '.': ['.'],
    'a.b.#': ['a.b', 'a.b.c'],
    '#.a.#': ['a', 'a.', '.a', 'a.b', 'a..b', 'a.x.b', 'a.b.c', 'x.a', 'a.a'],
}


def test_the_reference_matches_rabbitmq_on_every_probed_pair() -> None:
    for pattern, delivered in RABBITMQ.items():
        assert [k for k in KEYS if topic_matches(pattern, k)] == delivered, pattern


def test_the_trie_matches_rabbitmq_on_every_probed_pair() -> None:
    trie = TopicTrie()
    for pattern in RABBITMQ:
        trie.add(pattern, ("queue", pattern))
    for key in KEYS:
        got = {name for _, name in trie.match(key)}
        assert got == {p for p, ks in RABBITMQ.items() if key in ks}, key


def test_the_empty_key_and_a_hash_suffix() -> None:
    # the empty key has no words: `#` matches it, `*` does not
    assert topic_matches("#", "") and topic_matches("", "")
    assert not topic_matches("*", "") and not topic_matches("*.#", "")
    # `#` may match zero words: `a.#` matches `a`
    assert topic_matches("a.#", "a") and topic_matches("#.a.#", "a")
    assert not topic_matches("a.*", "a")


_word = st.sampled_from(["a", "b", "", "*", "#"])
_patterns = st.lists(st.lists(_word, max_size=4).map(".".join), min_size=1, max_size=6)
_keys = st.lists(st.sampled_from(["a", "b", ""]), max_size=5).map(".".join)


@settings(max_examples=200, deadline=None)
@given(_patterns, st.lists(_keys, min_size=1, max_size=5))
def test_the_trie_agrees_with_the_reference(patterns: list[str], keys: list[str]) -> None:
    trie = TopicTrie()
    for i, pattern in enumerate(patterns):
        trie.add(pattern, ("queue", f"q{i}"))
    for key in keys:
        want = [("queue", f"q{i}") for i, p in enumerate(patterns) if topic_matches(p, key)]
        assert trie.match(key) == want, (patterns, key)


def test_the_validator_and_the_engine_agree_with_the_reference(tmp_path: Path) -> None:
    from runner.engine.contract import OutMessage
    from runner.engine.embedded import open_embedded
    from runner.engine.values import FsyncPolicy
    from runner.topology import cycles, rules
    from runner.topology.model import Binding, Exchange, ExchangeType, Queue, Topology

    assert cycles.topic_matches is rules.topic_matches is topic_matches
    t = Topology(exchanges=(("x", Exchange("x", ExchangeType.TOPIC)),),
                 queues=(("all", Queue("all")), ("any1", Queue("any1")), ("sub", Queue("sub"))),
                 bindings=(Binding("x", queue="sub", routing_key="a.#"),
                           Binding("x", queue="any1", routing_key="*"),
                           Binding("x", queue="all", routing_key="#")))
    backend = open_embedded(t, tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        keys = ["a", "", "a.b", "b"]
        published = backend.publish("x", [OutMessage(b"1", routing_key=k) for k in keys])
    finally:
        backend.close()
    for key, routes in zip(keys, published.routes, strict=True):
        want = {b.destination for b in t.bindings if topic_matches(b.routing_key, key)}
        assert set(routes) == want, key
    assert [set(r) for r in published.routes] == [
        {"sub", "any1", "all"}, {"all"}, {"sub", "all"}, {"any1", "all"}]
