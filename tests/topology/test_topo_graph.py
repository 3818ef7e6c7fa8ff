"""The topology as Mermaid and Graphviz DOT diagrams."""

from __future__ import annotations

import textwrap

from runner.topology.graph import diagram, dot, mermaid, render
from runner.topology.load import load_text
from runner.topology.model import Binding, Exchange, ExchangeType, Queue, Topology

SHOP = textwrap.dedent("""\
    version: 1
    name: shop
    topics:
      order-events: {partitions: 3}
    exchanges:
      orders: {type: topic, alternate_exchange: unrouted}
      unrouted: {type: fanout}
      audit: {type: fanout, internal: true}
      docs: {type: headers}
      email.dlx: {type: fanout}
    queues:
      email.queue:
        max_priority: 5
        dead_letter: {exchange: email.dlx, routing_key: dead}
      email.dead: {}
      pdf-jobs: {dead_letter: {exchange: email.dlx}}
      lost: {}
    bindings:
      - {exchange: orders, queue: email.queue, routing_key: "orders.#"}
      - {exchange: orders, topic: order-events, routing_key: "orders.*"}
      - {exchange: orders, to_exchange: audit, routing_key: "#"}
      - {exchange: unrouted, queue: lost}
      - {exchange: docs, queue: pdf-jobs, match: any, headers: {format: pdf, type: 'say "hi"'}}
      - {exchange: email.dlx, queue: email.dead}
    dlq_policies:
      standard: {dead_letter_queue: email.dead}
    consumer_groups:
      order-processing: {topic: order-events, handler: "shop.orders:process", instances: 3,
                         dlq_policy: standard}
      reporting: {topic: order-events}
    consumers:
      email-senders: {queue: email.queue, handler: "shop.email:send", concurrency: 4}
      pdf: {queue: pdf-jobs, handler: "shop.pdf:render", dlq_policy: standard}
    """)


def shop() -> Topology:
    result = load_text(SHOP, filename="shop.yaml")
    assert result.topology is not None, result.problems
    return result.topology


def test_mermaid_draws_every_entity_and_edge() -> None:
    assert mermaid(shop()) == textwrap.dedent("""\
        flowchart LR
            ex_audit{{"audit (fanout, internal)"}}
            ex_docs{{"docs (headers)"}}
            ex_email_dlx{{"email.dlx (fanout)"}}
            ex_orders{{"orders (topic)"}}
            ex_unrouted{{"unrouted (fanout)"}}
            q_email_dead[("email.dead")]
            q_email_queue[("email.queue (priority)")]
            q_lost[("lost")]
            q_pdf_jobs[("pdf-jobs")]
            t_order_events[["order-events (3 partitions)"]]
            g_order_processing[/"order-processing x3"/]
            g_reporting[/"reporting (external)"/]
            c_email_senders(["email-senders x4"])
            c_pdf(["pdf"])
            ex_orders -->|"orders.#35;"| q_email_queue
            ex_orders -->|"orders.*"| t_order_events
            ex_orders -->|"#35;"| ex_audit
            ex_unrouted --> q_lost
            ex_docs -->|"any: format=pdf, type=say #quot;hi#quot;"| q_pdf_jobs
            ex_email_dlx --> q_email_dead
            ex_orders -.->|"alternate"| ex_unrouted
            q_email_queue -.->|"dead letter: dead"| ex_email_dlx
            q_pdf_jobs -.->|"dead letter"| ex_email_dlx
            q_email_queue --> c_email_senders
            q_pdf_jobs --> c_pdf
            t_order_events --> g_order_processing
            t_order_events --> g_reporting
            c_pdf -.->|"dlq: standard"| q_email_dead
            g_order_processing -.->|"dlq: standard"| q_email_dead
        """)


def test_dot_draws_the_same_graph() -> None:
    text = dot(shop())
    lines = text.splitlines()
    assert lines[:3] == [
        'digraph "shop" {',
        "    rankdir=LR;",
        ('    ex_audit [label="audit (fanout, internal)", shape=hexagon];'),
    ]
    assert '    q_email_queue [label="email.queue (priority)", shape=cylinder];' in lines
    assert '    t_order_events [label="order-events (3 partitions)", shape=box3d];' in lines
    assert '    g_reporting [label="reporting (external)", shape=doubleoctagon];' in lines
    assert '    c_pdf [label="pdf", shape=ellipse];' in lines
    assert '    ex_orders -> q_email_queue [label="orders.#"];' in lines
    assert "    ex_unrouted -> q_lost;" in lines
    assert '    ex_docs -> q_pdf_jobs [label="any: format=pdf, type=say \\"hi\\""];' in lines
    assert '    ex_orders -> ex_unrouted [label="alternate", style=dashed];' in lines
    assert '    q_email_queue -> ex_email_dlx [label="dead letter: dead", style=dashed];' in lines
    assert '    g_order_processing -> q_email_dead [label="dlq: standard", style=dashed];' in lines
    assert lines[-1] == "}"
    assert len([line for line in lines if "->" in line]) == len(diagram(shop()).edges) == 15


def test_render_picks_the_format() -> None:
    t = shop()
    assert render(t) == mermaid(t)
    assert render(t, "dot") == dot(t)


def test_node_ids_stay_unique_when_names_differ_only_in_punctuation() -> None:
    t = Topology(
        queues=(("a.b", Queue("a.b")), ("a-b", Queue("a-b")), ("a_b", Queue("a_b"))),
        exchanges=(("x", Exchange("x", ExchangeType.FANOUT)),),
        bindings=(Binding("x", queue="a-b"), Binding("x", queue="a_b")),
    )
    d = diagram(t)
    assert [(n.id, n.label) for n in d.nodes if n.kind == "queue"] == [
        ("q_a_b", "a.b"),
        ("q_a_b_2", "a-b"),
        ("q_a_b_3", "a_b"),
    ]
    assert [(e.source, e.target) for e in d.edges] == [("ex_x", "q_a_b_2"), ("ex_x", "q_a_b_3")]


def test_references_to_unknown_names_are_left_out() -> None:
    t = Topology(
        exchanges=(("x", Exchange("x", ExchangeType.DIRECT, alternate_exchange="gone")),),
        bindings=(Binding("x", queue="missing"), Binding("nope", queue="missing")),
    )
    assert mermaid(t) == 'flowchart LR\n    ex_x{{"x (direct)"}}\n'
