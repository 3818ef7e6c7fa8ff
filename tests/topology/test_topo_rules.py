"""Semantic rules: one test per rule through the real loader, plus the matchers and cycles."""

from __future__ import annotations

import textwrap
import time

from hypothesis import given
from hypothesis import strategies as st

from runner.topology.load import load_text
from runner.topology.model import (
    Binding,
    DeadLetter,
    Exchange,
    ExchangeType,
    HeadersMatch,
    Queue,
    Topology,
)
from runner.topology.rules import (
    RULES,
    Index,
    check,
    find_cycles,
    topic_matches,
    topic_pattern_error,
)

FILE = "shop.yaml"


def found(yaml_text: str) -> list[tuple[str, int, int, str, str, str, str]]:
    """(file, line, column, path, rule, severity, message) of every problem."""
    result = load_text(textwrap.dedent(yaml_text), filename=FILE)
    return [
        (p.file, p.line, p.column, p.path, p.rule, p.severity.value, p.message)
        for p in result.problems
    ]


def topo(**kw: object) -> Topology:
    data: dict[str, object] = {}
    for key, values in kw.items():
        if key == "bindings":
            data[key] = tuple(values)  # type: ignore[call-overload]
        else:
            data[key] = tuple((v.name, v) for v in values)  # type: ignore[attr-defined]
    return Topology(**data)  # type: ignore[arg-type]


# ---------------------------------------------------------------- one test per rule


def test_rule_ids_are_unique_and_documented() -> None:
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids)) == 15
    import runner.topology.rules as module

    for rule_id in ids:
        assert rule_id in (module.__doc__ or "")


def test_missing_binding_source_suggests_the_close_name() -> None:
    assert found("""\
        version: 1
        exchanges:
          orders: {type: topic}
        queues:
          email_queue: {}
        bindings:
          - exchange: order
            queue: email_queue
        """) == [
        (
            FILE,
            7,
            15,
            "bindings[0].exchange",
            "missing-reference",
            "error",
            'binding source exchange "order" does not exist; did you mean "orders"?',
        ),
    ]


def test_missing_destinations_of_every_kind() -> None:
    assert found("""\
        version: 1
        exchanges:
          orders: {type: direct}
        queues:
          audit: {}
        topics:
          events: {}
        bindings:
          - {exchange: orders, queue: nothing-like-it}
          - {exchange: orders, topic: audit}
          - {exchange: orders, queue: events}
          - {exchange: orders, to_exchange: order}
        """) == [
        (
            FILE,
            9,
            31,
            "bindings[0].queue",
            "missing-reference",
            "error",
            'binding destination queue "nothing-like-it" does not exist',
        ),
        (
            FILE,
            10,
            31,
            "bindings[1].topic",
            "missing-reference",
            "error",
            'binding destination topic "audit" does not exist; "audit" is a queue: '
            'write "queue: audit"',
        ),
        (
            FILE,
            11,
            31,
            "bindings[2].queue",
            "missing-reference",
            "error",
            'binding destination queue "events" does not exist; "events" is a topic: '
            'write "topic: events"',
        ),
        (
            FILE,
            12,
            37,
            "bindings[3].to_exchange",
            "missing-reference",
            "error",
            'binding destination exchange "order" does not exist; did you mean "orders"?',
        ),
    ]


def test_missing_queue_side_references() -> None:
    assert found("""\
        version: 1
        exchanges:
          dlx: {type: fanout}
          main: {type: direct, alternate_exchange: dlq}
        queues:
          jobs:
            dead_letter: {exchange: dlz}
        """) == [
        (
            FILE,
            4,
            44,
            "exchanges.main.alternate_exchange",
            "missing-reference",
            "error",
            'alternate exchange "dlq" of exchange "main" does not exist; did you mean "dlx"?',
        ),
        (
            FILE,
            7,
            29,
            "queues.jobs.dead_letter.exchange",
            "missing-reference",
            "error",
            'dead-letter exchange "dlz" of queue "jobs" does not exist; did you mean "dlx"?',
        ),
    ]


def test_missing_consumer_side_references() -> None:
    assert found("""\
        version: 1
        topics:
          order-events: {partitions: 2}
        queues:
          jobs.dlq: {}
        dlq_policies:
          standard: {dead_letter_queue: jobs.dlk}
        consumer_groups:
          g: {topics: [order-events, order-event], handler: "m:f", dlq_policy: standart}
        consumers:
          c: {queue: job, handler: "m:f", dlq_policy: standard}
        """) == [
        (
            FILE,
            7,
            33,
            "dlq_policies.standard.dead_letter_queue",
            "missing-reference",
            "error",
            'dead-letter queue "jobs.dlk" of dlq_policy "standard" is neither a queue nor a topic; '
            'did you mean "jobs.dlq"?',
        ),
        (
            FILE,
            9,
            30,
            "consumer_groups.g.topics[1]",
            "missing-reference",
            "error",
            'topic "order-event" of consumer group "g" does not exist; '
            'did you mean "order-events"?',
        ),
        (
            FILE,
            9,
            72,
            "consumer_groups.g.dlq_policy",
            "missing-reference",
            "error",
            'dlq_policy "standart" of consumer group "g" does not exist; did you mean "standard"?',
        ),
        (
            FILE,
            11,
            14,
            "consumers.c.queue",
            "missing-reference",
            "error",
            'queue "job" of consumer "c" does not exist',
        ),
    ]


def test_invalid_topic_pattern() -> None:
    assert found("""\
        version: 1
        exchanges:
          orders: {type: topic}
        topics:
          t: {}
        bindings:
          - {exchange: orders, topic: t, routing_key: "orders.#x"}
        """) == [
        (
            FILE,
            7,
            47,
            "bindings[0].routing_key",
            "topic-pattern",
            "error",
            'routing key "orders.#x" is not a valid topic pattern: '
            'word "#x" mixes a wildcard with other characters',
        ),
    ]


def test_headers_option_on_a_direct_exchange() -> None:
    assert found("""\
        version: 1
        exchanges:
          docs: {type: direct}
        topics:
          t: {}
        bindings:
          - {exchange: docs, topic: t, headers: {a: b}}
        """) == [
        (
            FILE,
            7,
            32,
            "bindings[0].headers",
            "headers-option",
            "error",
            '"headers" only applies to headers exchanges; exchange "docs" is of type direct',
        ),
    ]


def test_reject_publish_dlx_without_dead_letter() -> None:
    assert found("""\
        version: 1
        queues:
          q:
            overflow: reject-publish-dlx
        """) == [
        (
            FILE,
            4,
            15,
            "queues.q.overflow",
            "overflow-dlx",
            "error",
            'overflow "reject-publish-dlx" on queue "q" needs a dead_letter exchange '
            "to send refused messages to",
        ),
    ]


def test_certain_dead_letter_cycle_is_an_error() -> None:
    assert found("""\
        version: 1
        exchanges:
          dlx: {type: fanout}
        queues:
          a:
            dead_letter: {exchange: dlx}
        bindings:
          - {exchange: dlx, queue: a}
        """) == [
        (
            FILE,
            6,
            29,
            "queues.a.dead_letter.exchange",
            "dlx-cycle",
            "error",
            'dead-letter cycle: queue "a" -> exchange "dlx" -> queue "a"; messages would loop '
            "forever (a message_ttl on a queue of the cycle makes it a deliberate delay loop)",
        ),
    ]


def test_key_dependent_dead_letter_cycle_is_a_warning() -> None:
    assert found("""\
        version: 1
        exchanges:
          main: {type: direct}
        queues:
          a:
            dead_letter: {exchange: main}
        bindings:
          - {exchange: main, queue: a, routing_key: retry}
        """) == [
        (
            FILE,
            6,
            29,
            "queues.a.dead_letter.exchange",
            "dlx-cycle",
            "warning",
            "possible dead-letter cycle, depending on the routing key: "
            'queue "a" -> exchange "main" -> queue "a"',
        ),
    ]


def test_dead_letter_cycle_through_a_ttl_queue_is_allowed() -> None:
    assert (
        found("""\
        version: 1
        exchanges:
          dlx: {type: fanout}
        queues:
          a:
            message_ttl: 10s
            dead_letter: {exchange: dlx}
        bindings:
          - {exchange: dlx, queue: a}
        """)
        == []
    )


def test_cycle_closed_by_a_drop_on_arrival_ttl_queue_is_a_warning() -> None:
    # issue 8 item 1: q1's TTL delays nothing, it drops everything on arrival
    assert found("""\
        version: 1
        exchanges: {x1: {type: fanout}, x2: {type: fanout}}
        queues:
          q1: {max_length: 0, message_ttl: 60s, dead_letter: {exchange: x2}}
          q2: {max_length: 0, dead_letter: {exchange: x1}}
        bindings: [{exchange: x1, queue: q1}, {exchange: x2, queue: q2}]
        """) == [
        (
            FILE,
            4,
            65,
            "queues.q1.dead_letter.exchange",
            "dlx-cycle",
            "warning",
            'dead-letter cycle closed by queues that drop or refuse on arrival: queue "q1" '
            '-> exchange "x2" -> queue "q2" -> exchange "x1" -> queue "q1"; queue "q1" '
            "(max_length 0) passes dead letters on at once, not after a message_ttl: a "
            "message that comes back to a queue it died in is dropped",
        ),
    ]


def test_cycle_closed_by_full_reject_publish_dlx_ttl_queues_is_a_warning() -> None:
    problems = found("""\
        version: 1
        exchanges: {x1: {type: fanout}, x2: {type: fanout}}
        queues:
          q1: {max_length: 1, overflow: reject-publish-dlx, message_ttl: 60s,
               dead_letter: {exchange: x2}}
          q2: {max_length: 5, overflow: reject-publish-dlx, message_ttl: 1s,
               dead_letter: {exchange: x1}}
        bindings: [{exchange: x1, queue: q1}, {exchange: x2, queue: q2}]
        """)
    assert [(p[3], p[4], p[5]) for p in problems] == [
        ("queues.q1.dead_letter.exchange", "dlx-cycle", "warning")]
    assert ('queue "q1" (overflow reject-publish-dlx when full), queue "q2" (overflow '
            "reject-publish-dlx when full) pass dead letters on at once") in problems[0][6]


def test_ttl_cycle_whose_queues_keep_what_arrives_is_still_allowed() -> None:
    # a drop-head TTL queue with room keeps what arrives: a real delay loop
    assert found("""\
        version: 1
        exchanges: {x1: {type: fanout}, x2: {type: fanout}}
        queues:
          q1: {max_length: 10, message_ttl: 60s, dead_letter: {exchange: x2}}
          q2: {max_length: 0, dead_letter: {exchange: x1}}
        bindings: [{exchange: x1, queue: q1}, {exchange: x2, queue: q2}]
        """) == []


def test_routing_key_on_fanout_binding_is_ignored() -> None:
    assert found("""\
        version: 1
        exchanges:
          news: {type: fanout}
        topics:
          t: {}
        bindings:
          - {exchange: news, topic: t, routing_key: sport}
        """) == [
        (
            FILE,
            7,
            45,
            "bindings[0].routing_key",
            "ignored-routing-key",
            "warning",
            'routing key "sport" is ignored: exchange "news" is of type fanout',
        ),
    ]


def test_wildcards_on_a_direct_exchange_are_literal() -> None:
    assert found("""\
        version: 1
        exchanges:
          orders: {type: direct}
        topics:
          t: {}
        bindings:
          - {exchange: orders, topic: t, routing_key: "orders.#"}
          - {exchange: orders, topic: t, routing_key: "orders.created"}
        """) == [
        (
            FILE,
            7,
            47,
            "bindings[0].routing_key",
            "literal-wildcard",
            "warning",
            'routing key "orders.#" on direct exchange "orders" is matched literally: '
            "wildcards only work on topic exchanges",
        ),
    ]


def test_binding_into_a_compacted_topic_without_key() -> None:
    assert found("""\
        version: 1
        topics:
          t: {cleanup_policy: compact}
          keyed: {cleanup_policy: compact, key: id}
        exchanges:
          x: {type: fanout}
        bindings:
          - {exchange: x, topic: t}
          - {exchange: x, topic: keyed}
        """) == [
        (
            FILE,
            8,
            26,
            "bindings[0].topic",
            "keyless-compacted",
            "warning",
            'topic "t" is compacted but has no key: messages routed from exchange "x" would be '
            'keyless and refused (set the topic\'s "key")',
        ),
    ]


def test_max_priority_above_ten() -> None:
    assert found("""\
        version: 1
        queues:
          q: {max_priority: 11}
        """) == [
        (
            FILE,
            3,
            21,
            "queues.q.max_priority",
            "priority-levels",
            "warning",
            'max_priority 11 on queue "q" is above 10; each level costs memory and few publishers '
            "need more than 10",
        ),
    ]


def test_more_instances_than_the_smallest_topic_has_partitions() -> None:
    assert found("""\
        version: 1
        topics:
          a: {partitions: 3}
          b: {partitions: 1}
        consumer_groups:
          g: {topics: [a, b], instances: 2}
          h: {topics: [a], instances: 3}
          i: {topic: a, instances: 5}
        """) == [
        (
            FILE,
            6,
            34,
            "consumer_groups.g.instances",
            "idle-instances",
            "warning",
            'consumer group "g" has 2 instances but topic "b" has 1 partition; '
            "1 instance would get none of its partitions",
        ),
        (
            FILE,
            8,
            28,
            "consumer_groups.i.instances",
            "idle-instances",
            "warning",
            'consumer group "i" has 5 instances but topic "a" has 3 partitions; '
            "2 instances would stay idle",
        ),
    ]


def test_consumer_whose_failures_would_be_dropped() -> None:
    assert found("""\
        version: 1
        queues:
          q: {}
        consumers:
          worker:
            queue: q
            handler: "m:f"
        """) == [
        (
            FILE,
            5,
            3,
            "consumers.worker",
            "dropped-failures",
            "warning",
            'failures of consumer "worker" would be dropped: it has no dlq_policy and queue "q" '
            "has no dead_letter",
        ),
    ]


def test_group_whose_failures_would_be_dropped() -> None:
    assert found("""\
        version: 1
        topics:
          t: {}
        consumer_groups:
          readers: {topic: t, handler: "m:f"}
          external: {topic: t}
        """) == [
        (
            FILE,
            5,
            3,
            "consumer_groups.readers",
            "dropped-failures",
            "warning",
            'failures of consumer group "readers" would be dropped: it has no dlq_policy '
            "(a group has no dead_letter exchange to fall back on)",
        ),
    ]


def test_retries_under_at_most_once() -> None:
    assert found("""\
        version: 1
        queues:
          q: {}
          q.dlq: {}
        dlq_policies:
          p: {max_retries: 2, dead_letter_queue: q.dlq}
          none: {max_retries: 0, dead_letter_queue: q.dlq}
        consumers:
          c: {queue: q, handler: "m:f", delivery: at-most-once, dlq_policy: p}
          d: {queue: q, handler: "m:f", delivery: at-most-once, dlq_policy: none}
        """) == [
        (
            FILE,
            9,
            69,
            "consumers.c.dlq_policy",
            "at-most-once-retries",
            "warning",
            'dlq_policy "p" retries 2 times but consumer "c" is at-most-once: nothing is retried, '
            "failures go straight to the DLQ",
        ),
    ]


def test_dlq_that_feeds_the_consumer_back() -> None:
    assert found("""\
        version: 1
        topics:
          t: {}
        dlq_policies:
          p: {dead_letter_queue: t}
        consumer_groups:
          g: {topic: t, handler: "m:f", dlq_policy: p}
        """) == [
        (
            FILE,
            7,
            45,
            "consumer_groups.g.dlq_policy",
            "dlq-loop",
            "warning",
            'dlq_policy "p" sends the failures of consumer group "g" back to "t", which it reads: '
            "they would be handled again",
        ),
    ]


def test_internal_exchange_nothing_publishes_to() -> None:
    assert found("""\
        version: 1
        exchanges:
          hidden: {type: fanout, internal: true}
          front: {type: fanout}
          fed: {type: fanout, internal: true}
        bindings:
          - {exchange: front, to_exchange: fed}
        """) == [
        (
            FILE,
            3,
            36,
            "exchanges.hidden.internal",
            "unreachable-internal",
            "warning",
            'internal exchange "hidden" receives nothing: no exchange binds to it and it is no '
            "alternate or dead-letter exchange",
        ),
    ]


def test_directory_topology_positions_point_into_the_right_file(tmp_path: object) -> None:
    from pathlib import Path

    from runner.topology.load import load

    root = Path(str(tmp_path))
    (root / "a.yaml").write_text("version: 1\nexchanges:\n  orders: {type: direct}\n")
    (root / "b.yaml").write_text(
        "version: 1\nqueues:\n  q: {dead_letter: {exchange: dlx}}\n"
        "bindings:\n  - {exchange: orders, queue: q}\n  - {exchange: ordres, queue: q}\n"
    )
    problems = load(str(root)).problems
    assert [(p.file, p.line, p.column, p.path, p.message) for p in problems] == [
        (
            str(root / "b.yaml"),
            3,
            31,
            "queues.q.dead_letter.exchange",
            'dead-letter exchange "dlx" of queue "q" does not exist',
        ),
        (
            str(root / "b.yaml"),
            6,
            16,
            "bindings[1].exchange",
            'binding source exchange "ordres" does not exist; did you mean "orders"?',
        ),
    ]


# ---------------------------------------------------------------- topic patterns


def test_topic_pattern_errors() -> None:
    assert topic_pattern_error("orders.#") is None
    assert topic_pattern_error("*.created") is None
    assert topic_pattern_error("#") is None
    assert topic_pattern_error("") is None
    assert topic_pattern_error("a.b*") == 'word "b*" mixes a wildcard with other characters'
    assert topic_pattern_error(".a") == (
        "it has an empty word (two dots in a row, or a dot at an end)"
    )


def test_topic_matching_examples() -> None:
    assert topic_matches("orders.*", "orders.created")
    assert not topic_matches("orders.*", "orders.created.eu")
    assert topic_matches("orders.#", "orders")
    assert topic_matches("orders.#", "orders.a.b")
    assert topic_matches("#.eu", "orders.created.eu")
    assert topic_matches("#", "")
    assert not topic_matches("orders.#", "ordersx.a")  # word by word, never across dots
    assert topic_matches("a.#.b", "a.b")
    assert not topic_matches("*", "")  # "" has no words, as in RabbitMQ (test_topo_matching)
    assert not topic_matches("*.*", "a")


_words = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4)


@given(_words, st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=4))
def test_topic_matching_agrees_with_a_brute_force_reference(
    key: list[str], pattern: list[str]
) -> None:
    def brute(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        head, rest = p[0], p[1:]
        if head == "#":
            return any(brute(rest, k[i:]) for i in range(len(k) + 1))
        if not k:
            return False
        return (head == "*" or head == k[0]) and brute(rest, k[1:])

    assert topic_matches(".".join(pattern), ".".join(key)) == brute(pattern, key)


# ---------------------------------------------------------------- cycles


def test_fixed_dead_letter_key_that_no_binding_matches_is_no_cycle() -> None:
    t = topo(
        exchanges=[Exchange("main", ExchangeType.DIRECT)],
        queues=[Queue("a", dead_letter=DeadLetter("main", "parked")), Queue("p")],
        bindings=[
            Binding("main", queue="a", routing_key="work"),
            Binding("main", queue="p", routing_key="parked"),
        ],
    )
    assert find_cycles(Index(t)) == []


def test_alternate_exchange_is_certain_when_no_binding_can_match() -> None:
    t = topo(
        exchanges=[
            Exchange("main", ExchangeType.DIRECT, alternate_exchange="ae"),
            Exchange("ae", ExchangeType.FANOUT),
        ],
        queues=[Queue("a", dead_letter=DeadLetter("main", "nothing"))],
        bindings=[Binding("ae", queue="a")],
    )
    (cycle,) = find_cycles(Index(t))
    assert cycle.certain
    assert cycle.route == ('queue "a"', 'exchange "main"', 'exchange "ae"', 'queue "a"')


def test_alternate_exchange_is_skipped_when_a_binding_surely_matches() -> None:
    t = topo(
        exchanges=[
            Exchange("main", ExchangeType.DIRECT, alternate_exchange="ae"),
            Exchange("ae", ExchangeType.FANOUT),
        ],
        queues=[Queue("a", dead_letter=DeadLetter("main", "k")), Queue("b")],
        bindings=[Binding("ae", queue="a"), Binding("main", queue="b", routing_key="k")],
    )
    assert find_cycles(Index(t)) == []


def test_headers_binding_makes_a_cycle_possible_only() -> None:
    t = topo(
        exchanges=[Exchange("h", ExchangeType.HEADERS)],
        queues=[Queue("a", dead_letter=DeadLetter("h", "k"))],
        bindings=[Binding("h", queue="a", match=HeadersMatch.ANY, headers=(("x", "1"),))],
    )
    (cycle,) = find_cycles(Index(t))
    assert not cycle.certain


def test_a_cycle_is_reported_once_not_once_per_queue() -> None:
    t = topo(
        exchanges=[Exchange("f", ExchangeType.FANOUT), Exchange("g", ExchangeType.FANOUT)],
        queues=[Queue("b", dead_letter=DeadLetter("g")), Queue("a", dead_letter=DeadLetter("f"))],
        bindings=[Binding("f", queue="b"), Binding("g", queue="a")],
    )
    problems = [p for p in check(t) if p.rule == "dlx-cycle"]
    assert [(p.path, p.severity.value) for p in problems] == [
        ("queues.a.dead_letter.exchange", "error")
    ]


def test_a_key_fixed_upstream_stays_fixed_downstream() -> None:
    # a -> (key "retry") -> r ; r keeps the message's key, which is now "retry"
    t = topo(
        exchanges=[Exchange("d", ExchangeType.DIRECT)],
        queues=[
            Queue("a", dead_letter=DeadLetter("d", "retry")),
            Queue("r", dead_letter=DeadLetter("d")),
        ],
        bindings=[
            Binding("d", queue="r", routing_key="retry"),
            Binding("d", queue="a", routing_key="retry"),
        ],
    )
    (cycle,) = find_cycles(Index(t))
    assert cycle.certain


def test_a_message_coming_back_once_with_another_key_is_a_possible_cycle() -> None:
    # q (any key) -> d "k" -> r ; r fixes "y" -> fanout f -> q ; from q, "y" goes nowhere
    t = topo(
        exchanges=[Exchange("d", ExchangeType.DIRECT), Exchange("f", ExchangeType.FANOUT)],
        queues=[
            Queue("q", dead_letter=DeadLetter("d")),
            Queue("r", dead_letter=DeadLetter("f", "y")),
        ],
        bindings=[Binding("d", queue="r", routing_key="k"), Binding("f", queue="q")],
    )
    (cycle,) = find_cycles(Index(t))
    assert not cycle.certain
    assert cycle.route == ('queue "q"', 'exchange "d"', 'queue "r"', 'exchange "f"', 'queue "q"')


def test_a_loop_only_for_keys_fixed_elsewhere_is_a_warning() -> None:
    # qb dead-letters with key "" into qa; qa (own key) loops only for the key "".
    t = topo(
        exchanges=[Exchange("a", ExchangeType.DIRECT)],
        queues=[
            Queue("qb", dead_letter=DeadLetter("a", "")),
            Queue("qa", dead_letter=DeadLetter("a")),
        ],
        bindings=[Binding("a", queue="qa", routing_key="")],
    )
    (cycle,) = find_cycles(Index(t))
    assert (cycle.start, cycle.certain) == ("qa", False)
    assert cycle.route == ('queue "qa"', 'exchange "a"', 'queue "qa"')


def test_cycle_detection_is_fast_on_a_long_chain() -> None:
    n = 3000
    exchanges = [Exchange(f"x{i}", ExchangeType.FANOUT) for i in range(n)]
    queues = [Queue(f"q{i}", dead_letter=DeadLetter(f"x{i}")) for i in range(n)]
    bindings = [Binding(f"x{i}", queue=f"q{(i + 1) % n}") for i in range(n)]
    t = topo(exchanges=exchanges, queues=queues, bindings=bindings)
    start = time.process_time()  # CPU time: a loaded machine stretches wall time
    (cycle,) = find_cycles(Index(t))
    assert time.process_time() - start < 2.0
    assert cycle.certain and len(cycle.route) == 2 * n + 1


# ---------------------------------------------------------------- property: any reference graph

_names = st.sampled_from(["a", "b", "c", "d"])
_types = st.sampled_from(list(ExchangeType))
_keys = st.sampled_from(["", "k", "j", "#", "k.*", "*"])


@st.composite
def _topologies(draw: st.DrawFn) -> Topology:
    exchanges = {
        n: Exchange(n, draw(_types), alternate_exchange=draw(st.none() | _names))
        for n in draw(st.sets(_names, max_size=4))
    }
    queues = {}
    for n in draw(st.sets(_names.map(lambda s: "q" + s), max_size=4)):
        dl = draw(st.none() | st.builds(DeadLetter, _names, st.none() | _keys))
        ttl = draw(st.sampled_from([None, None, None, 5.0]))
        queues[n] = Queue(n, dead_letter=dl, message_ttl_s=ttl)
    bindings = []
    for _ in range(draw(st.integers(0, 8))):
        src = draw(_names)
        key = draw(_keys)
        if draw(st.booleans()):
            bindings.append(Binding(src, queue="q" + draw(_names), routing_key=key))
        else:
            bindings.append(Binding(src, to_exchange=draw(_names), routing_key=key))
    return topo(exchanges=exchanges.values(), queues=queues.values(), bindings=bindings)


@given(_topologies())
def test_any_reference_graph_is_checked_and_every_cycle_route_is_real(t: Topology) -> None:
    check(t)  # never raises, whatever is missing
    exchanges, queues = t.exchange_map(), t.queue_map()
    edges: set[tuple[str, str]] = set()
    for b in t.bindings:
        target = f'queue "{b.queue}"' if b.queue else f'exchange "{b.to_exchange}"'
        edges.add((f'exchange "{b.exchange}"', target))
    for name, ex in exchanges.items():
        if ex.alternate_exchange:
            edges.add((f'exchange "{name}"', f'exchange "{ex.alternate_exchange}"'))
    for name, q in queues.items():
        if q.dead_letter:
            edges.add((f'queue "{name}"', f'exchange "{q.dead_letter.exchange}"'))
    for cycle in find_cycles(Index(t)):
        route = cycle.route
        assert route[0] == route[-1] == f'queue "{cycle.start}"'
        assert all(step in edges for step in zip(route, route[1:], strict=False))
        on_cycle = [queues[w[7:-1]] for w in route if w.startswith("queue ")]
        assert all(q.message_ttl_s is None for q in on_cycle)


# ---------------------------------------------------------------- property: against a simulation

_SAMPLE_KEYS = ("", "k", "j", "k.x", "zzz")
_SAMPLE_HEADERS: tuple[dict[str, str], ...] = ({}, {"x": "1"})


def _concrete_route(t: Topology, exchange: str, key: str, headers: dict[str, str]) -> set[str]:
    """Queues a message with `key` and `headers` reaches from `exchange` (AMQP semantics)."""
    exchanges = t.exchange_map()
    reached: set[str] = set()
    seen: set[str] = set()

    def matches(kind: ExchangeType, b: Binding) -> bool:
        if kind is ExchangeType.FANOUT:
            return True
        if kind is ExchangeType.DIRECT:
            return b.routing_key == key
        if kind is ExchangeType.TOPIC:
            return topic_matches(b.routing_key, key)
        pairs = [(k, v) for k, v in b.headers if not k.startswith("x-")]
        hits = [headers.get(k) == v for k, v in pairs]
        return all(hits) if b.match is HeadersMatch.ALL else any(hits)

    def visit(name: str) -> None:
        ex = exchanges.get(name)
        if ex is None or name in seen:
            return
        seen.add(name)
        matched = False
        for b in t.bindings:
            if b.exchange == name and matches(ex.type, b):
                matched = True
                if b.queue is not None:
                    reached.add(b.queue)
                elif b.to_exchange is not None:
                    visit(b.to_exchange)
        if not matched and ex.alternate_exchange is not None:
            visit(ex.alternate_exchange)

    visit(exchange)
    return reached


def _returns(t: Topology, start: str, key: str, headers: dict[str, str]) -> bool:
    """Whether a message dead-lettered from `start` can come back to `start`
    (through queues without a message_ttl), simulated with concrete keys."""
    queues = t.queue_map()
    todo, seen = [(start, key)], set()
    while todo:
        name, k = todo.pop()
        q = queues[name]
        if q.dead_letter is None or q.message_ttl_s is not None or (name, k) in seen:
            continue
        seen.add((name, k))
        k = q.dead_letter.routing_key if q.dead_letter.routing_key is not None else k
        for nxt in _concrete_route(t, q.dead_letter.exchange, k, headers):
            if nxt == start:
                return True
            if nxt in queues:
                todo.append((nxt, k))
    return False


@given(_topologies())
def test_cycles_agree_with_a_concrete_simulation(t: Topology) -> None:
    cycles = find_cycles(Index(t))
    for name, q in t.queues:
        if q.message_ttl_s is None and any(
            _returns(t, name, k, h) for k in _SAMPLE_KEYS for h in _SAMPLE_HEADERS
        ):
            assert cycles, f"queue {name} can loop but no cycle was reported"
    queues = t.queue_map()
    for cycle in (c for c in cycles if c.certain):
        hops = [w[7:-1] for w in cycle.route if w.startswith("queue ")]
        for k in _SAMPLE_KEYS:
            for h in _SAMPLE_HEADERS:
                key = k
                for here, there in zip(hops, hops[1:], strict=False):
                    dl = queues[here].dead_letter
                    assert dl is not None
                    key = dl.routing_key if dl.routing_key is not None else key
                    assert there in _concrete_route(t, dl.exchange, key, h), (cycle, k, h)
