"""Routing: AMQP 0-9-1 exchange types, e2e bindings, alternate exchanges, counters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.broker.broker import PublishRefused
from runner.broker.message import Message
from runner.broker.routing import Route, Router, TopicTrie
from runner.errors import Forbidden, NotFound
from runner.topology.model import Binding, Exchange, ExchangeType, HeadersMatch
from tests.broker.conftest import MakeBroker

T = ExchangeType


def router(*exchanges: Exchange, bindings: tuple[Binding, ...] = ()) -> Router:
    r = Router()
    for e in exchanges:
        r.declare_exchange(e)
    for b in bindings:
        r.bind(b)
    return r


def test_direct_matches_the_exact_key_only() -> None:
    r = router(Exchange("d", T.DIRECT), bindings=(
        Binding("d", queue="a", routing_key="k"), Binding("d", queue="b", routing_key="k2")))
    assert r.route("d", "k") == Route(("a",), ())
    assert r.route("d", "k2") == Route(("b",), ())
    assert r.route("d", "k.x") == Route((), ())


def test_fanout_ignores_the_key() -> None:
    r = router(Exchange("f", T.FANOUT), bindings=(
        Binding("f", queue="a", routing_key="zzz"), Binding("f", topic="t")))
    assert r.route("f", "anything") == Route(("a",), ("t",))


@pytest.mark.parametrize(("pattern", "key", "hit"), [
    ("orders.*", "orders.created", True),
    ("orders.*", "orders", False),
    ("orders.*", "orders.eu.created", False),
    ("orders.#", "orders", True),
    ("orders.#", "orders.eu.created", True),
    ("#", "", True),
    ("#", "a.b.c", True),
    ("*", "", False),
    ("", "", True),
    ("", "a", False),
    ("#.created", "created", True),
    ("#.created", "orders.eu.created", True),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y.c", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    # kombu's old bug: a wildcard matching across a dot
    ("a*", "ab", False),
    ("a.*", "a.b.c", False),
    ("a.b", "a.bc", False),
    ("a.*.c", "a..c", True),
])
def test_topic_patterns_match_word_by_word(pattern: str, key: str, hit: bool) -> None:
    trie = TopicTrie()
    trie.add(pattern, ("queue", "q"))
    assert (trie.match(key) == [("queue", "q")]) is hit


def _ref_match(pattern: list[str], key: list[str]) -> bool:
    """The reference: a plain recursive matcher over word lists."""
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_ref_match(rest, key[i:]) for i in range(len(key) + 1))
    if not key:
        return False
    return (head == "*" or head == key[0]) and _ref_match(rest, key[1:])


def _words(s: str) -> list[str]:
    return s.split(".") if s else []


_word = st.sampled_from(["a", "b", "c", "ab", ""])
_pword = st.sampled_from(["a", "b", "c", "ab", "*", "#"])


@settings(max_examples=400, deadline=None)
@given(patterns=st.lists(st.lists(_pword, max_size=5), min_size=1, max_size=6),
       key=st.lists(_word, max_size=6))
def test_topic_trie_agrees_with_a_reference_matcher(
    patterns: list[list[str]], key: list[str],
) -> None:
    trie = TopicTrie()
    for i, p in enumerate(patterns):
        trie.add(".".join(p), ("queue", f"q{i}"))
    key_text = ".".join(key)
    expected = {f"q{i}" for i, p in enumerate(patterns)
                if _ref_match(_words(".".join(p)), _words(key_text))}
    assert {name for _, name in trie.match(key_text)} == expected


def test_headers_all_and_any_compare_values_as_strings() -> None:
    r = router(Exchange("h", T.HEADERS), bindings=(
        Binding("h", queue="all", headers=(("format", "pdf"), ("size", "5"))),
        Binding("h", queue="any", match=HeadersMatch.ANY,
                headers=(("format", "pdf"), ("type", "report"))),
        Binding("h", queue="flag", headers=(("urgent", "true"),)),
    ))
    assert r.route("h", "", {"format": "pdf", "size": 5}).queues == ("all", "any")
    assert r.route("h", "", {"format": "pdf"}).queues == ("any",)
    assert r.route("h", "", {"type": "report"}).queues == ("any",)
    assert r.route("h", "", {"urgent": True}).queues == ("flag",)
    assert r.route("h", "", {}).queues == ()


def test_headers_binding_ignores_x_arguments() -> None:
    r = router(Exchange("h", T.HEADERS), bindings=(
        Binding("h", queue="q", headers=(("format", "pdf"), ("x-note", "ignored"))),))
    assert r.route("h", "", {"format": "pdf"}).queues == ("q",)


def test_exchange_to_exchange_loops_route_once_and_queues_get_one_copy() -> None:
    r = router(
        Exchange("a", T.FANOUT), Exchange("b", T.FANOUT), Exchange("c", T.FANOUT),
        bindings=(
            Binding("a", to_exchange="b"), Binding("b", to_exchange="a"),
            Binding("a", to_exchange="c"), Binding("b", queue="q"), Binding("c", queue="q"),
            Binding("c", topic="t"),
        ))
    assert r.route("a", "k") == Route(("q",), ("t",))


def test_alternate_exchange_gets_what_no_binding_matched() -> None:
    r = router(
        Exchange("main", T.DIRECT, alternate_exchange="alt"), Exchange("alt", T.FANOUT),
        bindings=(Binding("main", queue="q", routing_key="k"), Binding("alt", queue="lost")))
    assert r.route("main", "k") == Route(("q",), ())
    assert r.route("main", "other") == Route(("lost",), ())


def test_unroutable_counts_messages_that_reached_nothing() -> None:
    r = router(Exchange("d", T.DIRECT), bindings=(Binding("d", queue="q", routing_key="k"),))
    r.route("d", "k")
    r.route("d", "nope")
    r.route("d", "nope")
    assert r.counters()["d"] == (3, 2)


def test_cache_is_invalidated_when_bindings_change() -> None:
    r = router(Exchange("t", T.TOPIC), bindings=(Binding("t", queue="a", routing_key="x.*"),))
    assert r.route("t", "x.y").queues == ("a",)
    r.bind(Binding("t", queue="b", routing_key="#"))
    assert r.route("t", "x.y").queues == ("a", "b")
    r.unbind(Binding("t", queue="a", routing_key="x.*"))
    assert r.route("t", "x.y").queues == ("b",)


def test_publish_to_internal_exchange_is_forbidden(make_broker: MakeBroker) -> None:
    b = make_broker([Exchange("inner", T.FANOUT, internal=True)])
    with pytest.raises(Forbidden) as err:
        b.publish("inner", [Message(b"x")])
    assert str(err.value) == (
        "exchange 'inner' is internal: only other exchanges may publish to it")


def test_internal_exchange_is_reachable_through_a_binding(make_broker: MakeBroker) -> None:
    from runner.topology.model import Queue
    b = make_broker(
        [Exchange("outer", T.FANOUT), Exchange("inner", T.FANOUT, internal=True)],
        [Queue("q")], [Binding("outer", to_exchange="inner"), Binding("inner", queue="q")])
    assert b.publish("outer", [Message(b"x")]) == [Route(("q",), ())]


def test_unknown_exchange_is_not_found(make_broker: MakeBroker) -> None:
    b = make_broker()
    with pytest.raises(NotFound) as err:
        b.publish("ghost", [Message(b"x")])
    assert str(err.value) == "exchange 'ghost' not found"


def test_publish_counts_per_exchange(make_broker: MakeBroker) -> None:
    from runner.topology.model import Queue
    b = make_broker([Exchange("d", T.DIRECT)], [Queue("q")],
                    [Binding("d", queue="q", routing_key="k")])
    routes = b.publish("d", [Message(b"1", "k"), Message(b"2", "no")])
    assert routes == [Route(("q",), ()), Route((), ())]
    st_ = b.stats()
    assert st_.exchange_published["d"] == 2
    assert st_.exchange_unroutable["d"] == 1


def test_route_names_only_queues_that_exist(make_broker: MakeBroker) -> None:
    from runner.topology.model import Queue
    b = make_broker([Exchange("f", T.FANOUT)], [Queue("q")],
                    [Binding("f", queue="q"), Binding("f", queue="missing")])
    assert b.publish("f", [Message(b"x")]) == [Route(("q",), ())]


def test_a_mixed_batch_keeps_its_order_routes_and_properties_across_a_restart(
    make_broker: MakeBroker,
) -> None:
    from runner.topology.model import Queue
    topo = ([Exchange("t", T.TOPIC)], [Queue("a", max_priority=3), Queue("b")],
            [Binding("t", queue="a", routing_key="k.#"),
             Binding("t", queue="b", routing_key="k.b")])
    b = make_broker(*topo)
    batch = [
        Message(b"1", "k.a"), Message(b"2", "k.a", message_id="m2"),
        Message(b"3", "k.a", headers={"h": "v"}), Message(b"4", "k.b", priority=2),
        Message(b"5", "k.a"), Message(b"6", "none"),
        Message(b"7", "k.a", content_type="text/plain"), Message(b"8", "k.a", ttl_s=50),
        Message(b"9", "k.b", message_id="m9", content_type="application/json"),
        Message(b"10", "k.a", message_id="m10", content_type="application/json"),
    ]
    a, ab, none = Route(("a",), ()), Route(("a", "b"), ()), Route((), ())
    assert b.publish("t", batch) == [a, a, a, ab, a, none, a, a, ab, a]
    st_ = b.stats()
    assert (st_.exchange_published["t"], st_.exchange_unroutable["t"]) == (10, 1)
    for _ in range(2):
        got = b.peek("a", 20)
        assert [(d.body, d.priority, d.routing_key, d.message_id, d.content_type)
                for d in got] == [
            (b"4", 2, "k.b", None, None), (b"1", 0, "k.a", None, None),
            (b"2", 0, "k.a", "m2", None), (b"3", 0, "k.a", None, None),
            (b"5", 0, "k.a", None, None), (b"7", 0, "k.a", None, "text/plain"),
            (b"8", 0, "k.a", None, None), (b"9", 0, "k.b", "m9", "application/json"),
            (b"10", 0, "k.a", "m10", "application/json"),
        ]
        assert got[3].headers == {"h": "v"}
        assert [d.body for d in b.peek("b", 5)] == [b"4", b"9"]
        b.close()
        b = make_broker(*topo)  # the journal's cached keys decode to the same messages


def test_a_refusal_after_a_run_keeps_the_run(make_broker: MakeBroker) -> None:
    from runner.topology.model import Overflow, Queue
    b = make_broker([Exchange("t", T.TOPIC)],
                    [Queue("ok"), Queue("full", max_length=0,
                                        overflow=Overflow.REJECT_PUBLISH)],
                    [Binding("t", queue="ok", routing_key="ok"),
                     Binding("t", queue="full", routing_key="full")])
    batch = [Message(b"1", "ok"), Message(b"2", "ok"), Message(b"3", "full"),
             Message(b"4", "ok")]
    with pytest.raises(PublishRefused) as err:
        b.publish("t", batch)
    assert (err.value.accepted, err.value.routed) == (2, ())
    assert err.value.routes == [Route(("ok",), ()), Route(("ok",), ())]
    assert [d.body for d in b.peek("ok", 5)] == [b"1", b"2"]
