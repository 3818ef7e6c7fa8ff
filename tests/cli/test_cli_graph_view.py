"""`runner graph` at 50+ nodes: merged dead-letter edges, clusters, `--only NAME`, a legend,
and consumers and groups drawn differently in both languages (the real console script;
DOT checked by Graphviz itself)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli.console import run, write

SERVICES = ("billing", "email", "invoices", "orders", "payments", "reports", "search",
            "shipping", "stock", "users")


def big_topology() -> str:
    """10 services, each an exchange, a queue, its dead-letter queue, a topic, a consumer
    and a group (60+ nodes); every queue dead-letters into the one `dlx`."""
    lines = ["version: 1", "name: big", "exchanges:", "  dlx: {type: topic}"]
    lines += [f"  {s}: {{type: topic}}" for s in SERVICES]
    lines += ["topics:"] + [f"  {s}.events: {{partitions: 2}}" for s in SERVICES]
    lines += ["queues:", "  all.dead: {}"]
    for s in SERVICES:
        lines += [f"  {s}.jobs: {{dead_letter: {{exchange: dlx}}}}", f"  {s}.dlq: {{}}"]
    lines += ["bindings:", '  - {exchange: dlx, queue: all.dead, routing_key: "#"}']
    for s in SERVICES:
        lines += [f'  - {{exchange: {s}, queue: {s}.jobs, routing_key: "{s}.#"}}',
                  f'  - {{exchange: {s}, topic: {s}.events, routing_key: "{s}.#"}}']
    lines += ["dlq_policies:", "  shared: {dead_letter_queue: all.dead}"]
    lines += ["consumers:"] + [
        f'  {s}-worker: {{queue: {s}.jobs, handler: "h:f", dlq_policy: shared}}'
        for s in SERVICES]
    lines += ["consumer_groups:"] + [
        f'  {s}-readers: {{topic: {s}.events, handler: "h:f", dlq_policy: shared}}'
        for s in SERVICES]
    return "\n".join(lines) + "\n"


def graphviz(dot_text: str) -> str:
    """Graphviz's own parse of a DOT text (its plain layout): fails on a syntax error."""
    exe = shutil.which("dot")
    if exe is None:
        import os
        missing = "graphviz is missing: install it with `sudo apt-get install graphviz`"
        if os.environ.get("CI"):
            pytest.fail(f"{missing} (CI is set: required)", pytrace=False)
        pytest.skip(missing)
    done = subprocess.run([exe, "-Tplain"], input=dot_text, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def test_dead_letter_edges_of_many_queues_meet_in_one_junction(tmp_path: Path) -> None:
    write(tmp_path / "big.yaml", big_topology())
    done = run(tmp_path, "graph", "big.yaml")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # ten dashed edges into the junction, unlabelled; the label once, on the junction
    assert lines.count("    j_ex_dlx -.-> ex_dlx") == 1
    assert '    j_ex_dlx(("dead letter"))' in lines
    assert sum(1 for line in lines if line.endswith("-.-> j_ex_dlx")) == 10
    assert not any(line.endswith("-.->|\"dead letter\"| ex_dlx") for line in lines)
    # twenty readers share one dlq_policy queue: one junction labelled with the policy
    assert '    j_q_all_dead(("dlq: shared"))' in lines
    assert sum(1 for line in lines if line.endswith("-.-> j_q_all_dead")) == 20
    every = run(tmp_path, "graph", "big.yaml", "--no-merge")
    assert "j_ex_dlx" not in every.stdout
    assert every.stdout.count('-.->|"dead letter"| ex_dlx') == 10
    dot = run(tmp_path, "graph", "big.yaml", "--format", "dot")
    assert "    j_ex_dlx [shape=point];" in dot.stdout
    assert '    j_ex_dlx -> ex_dlx [label="dead letter", style=dashed];' in dot.stdout
    graphviz(dot.stdout)


def test_cluster_by_prefix_and_by_kind(tmp_path: Path) -> None:
    write(tmp_path / "big.yaml", big_topology())
    done = run(tmp_path, "graph", "big.yaml", "--cluster", "prefix")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.count("    subgraph ") == 10  # one per service; `dlx` and `all` stand alone
    block = text[text.index('    subgraph box_billing ["billing"]'):]
    block = block[:block.index("    end\n")]
    assert [line.strip().split("(")[0].split("[")[0].split("{")[0]
            for line in block.splitlines()[1:]] == [
        "ex_billing", "q_billing_dlq", "q_billing_jobs", "t_billing_events",
        "g_billing_readers", "c_billing_worker"]
    by_kind = run(tmp_path, "graph", "big.yaml", "--cluster", "kind", "--format", "dot")
    assert by_kind.stdout.count("    subgraph cluster_") == 4
    assert '        label="consumers and groups"; style=rounded;' in by_kind.stdout
    plain = graphviz(by_kind.stdout)
    assert plain.count("\nnode ") == 10 * 6 + 2 + 2  # every entity, and the two junctions


def test_only_draws_the_paths_through_one_entity(tmp_path: Path) -> None:
    write(tmp_path / "big.yaml", big_topology())
    done = run(tmp_path, "graph", "big.yaml", "--only", "email.jobs")
    assert done.returncode == 0, done.stderr
    nodes = sorted(line.split("(")[0].split("[")[0].split("{")[0].strip()
                   for line in done.stdout.splitlines()[1:] if "->" not in line)
    # upstream: its exchange; downstream: its consumer, the dlx, all.dead (via the dlx and
    # via the consumer's dlq_policy); no other service
    assert nodes == ["c_email_worker", "ex_dlx", "ex_email", "q_all_dead", "q_email_jobs"]
    assert "billing" not in done.stdout
    group = run(tmp_path, "graph", "big.yaml", "--only", "stock-readers", "--format", "dot")
    assert "t_stock_events -> g_stock_readers;" in group.stdout
    assert "q_stock_jobs" not in group.stdout
    graphviz(group.stdout)


def test_only_an_unknown_name_is_a_usage_error_with_a_suggestion(tmp_path: Path) -> None:
    write(tmp_path / "big.yaml", big_topology())
    done = run(tmp_path, "graph", "big.yaml", "--only", "emial.jobs")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("runner graph: --only emial.jobs: no exchange, queue, topic, "
                           "consumer or group is named 'emial.jobs'; did you mean "
                           '"email.jobs"?\n')


def test_a_legend_and_consumers_drawn_unlike_groups(tmp_path: Path) -> None:
    write(tmp_path / "big.yaml", big_topology())
    done = run(tmp_path, "graph", "big.yaml", "--legend")
    lines = done.stdout.splitlines()
    assert '    c_email_worker(["email-worker"])' in lines  # a stadium
    assert '    g_email_readers[/"email-readers x1"/]' in lines  # a parallelogram
    legend = lines[lines.index('    subgraph legend ["legend"]'):]
    assert legend == [
        '    subgraph legend ["legend"]',
        '        legend_exchange{{"exchange"}}',
        '        legend_queue[("queue")]',
        '        legend_topic[["topic"]]',
        '        legend_consumer(["consumer"])',
        '        legend_group[/"consumer group"/]',
        '        legend_exchange -->|"messages"| legend_queue',
        '        legend_consumer -.->|"fallback: alternate, dead letter, dlq"| legend_group',
        "    end",
    ]
    dot = run(tmp_path, "graph", "big.yaml", "--legend", "--format", "dot")
    assert '        legend_group [label="consumer group", shape=doubleoctagon];' in dot.stdout
    graphviz(dot.stdout)
