"""Limits against hostile input, against the real daemon (leftovers of issue 17):
the first topology load is bounded by --load-timeout like a reload's."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import RUNNER, Daemon, error_of, wait_for

pytestmark = pytest.mark.e2e


def run_cli(workdir: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_TOKEN"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([str(RUNNER), *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout_s, check=False, env=env)


# ---------------------------------------------------------------- start-up load


def test_a_handler_module_that_blocks_at_import_stops_the_start_after_the_load_timeout(
    tmp_path: Path,
) -> None:
    (tmp_path / "sleepy.py").write_text(
        "import time\ntime.sleep(600)\n\ndef handle(msg):\n    pass\n")
    (tmp_path / "t.yaml").write_text(
        "version: 1\nname: e2e-slow-import\nqueues:\n  q: {}\n"
        "consumers:\n  c: {queue: q, handler: 'sleepy:handle'}\n")
    started = time.monotonic()
    done = run_cli(tmp_path, "run", "t.yaml", "--listen", "127.0.0.1:0", "--load-timeout", "1s")
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "runner run: loading t.yaml did not finish within 1s (--load-timeout): importing "
        "the handler modules hangs (a hung file system, or a handler module that blocks "
        "at import?); not started"
    )
    assert took < 30, took  # 1 s and the interpreter's start, not the module's 600 s
    assert not (tmp_path / "data").exists()  # given up before the data dir was touched


def test_a_handler_module_that_imports_within_the_load_timeout_starts(
    start_daemon: Callable[..., Daemon],
) -> None:
    """The limit bounds the load only: a module taking 0.5 s of a 10 s limit starts and
    its handler runs."""
    d = start_daemon(
        "version: 1\nname: e2e-slowish-import\nqueues:\n  q: {}\n"
        "consumers:\n  c: {queue: q, handler: 'slowish:handle'}\n",
        modules={"slowish": "import time\ntime.sleep(0.5)\n\n"
                            "def handle(msg):\n    open('seen', 'w').write(str(msg.body))\n"},
        args=["--load-timeout", "10s"],
    )
    assert d.post("/v1/queues/q/messages", {"body": 7}).status == 202
    wait_for(lambda: (d.workdir / "seen").exists() and (d.workdir / "seen").read_text(), 20)


def test_a_reload_whose_handler_module_blocks_at_import_gives_up_after_the_load_timeout(
    start_daemon: Callable[..., Daemon],
) -> None:
    """The reload's handler imports are bounded like its read (before: the reload, and
    the reload lock, waited for the import for good)."""
    base = "version: 1\nname: e2e-reload-import\nqueues:\n  q: {}\n  r: {}\n"
    d = start_daemon(base, modules={"sleepy": "import time\ntime.sleep(600)\n\n"
                                              "def handle(msg):\n    pass\n"},
                     args=["--load-timeout", "1s", "--no-watch"])
    d.topology.write_text(base + "consumers:\n  c: {queue: q, handler: 'sleepy:handle'}\n")
    started = time.monotonic()
    got = d.post("/v1/admin/reload")
    assert got.status == 422, got.body
    assert time.monotonic() - started < 15
    assert got.body["error"] == (
        f"{d.topology}: importing the handler modules did not finish within 1s "
        "(--load-timeout; a handler module that blocks at import?); the running "
        "topology stays")
    again = d.post("/v1/admin/reload")  # the import still hangs: answered at once
    assert again.status == 422
    assert again.body["error"] == (
        f"{d.topology}: the previous read of the topology has not finished (a hung file "
        "system?); the running topology stays")
    assert d.get("/healthz").status == 200
    assert d.post("/v1/queues/r/messages", {"body": 1}).status == 202  # still serving
    d.stop()  # one SIGTERM: the hung import is in a daemon thread


# ---------------------------------------------------------------- memory budget

QUEUE = "version: 1\nname: e2e-budget\nqueues:\n  q: {durable: false}\n"


def test_headers_count_in_the_memory_budget(start_daemon: Callable[..., Daemon]) -> None:
    """A message with a 1,000-character header holds 512 + 1,307 bytes the budget counts
    (before: 512, so 1 MiB let ~2,000 such messages in, their headers uncounted)."""
    d = start_daemon(QUEUE, args=["--memory-budget", "1MiB", "--fsync", "never"])
    batch = {"messages": [{"body": 1, "headers": {"h": "x" * 1000}} for _ in range(100)]}
    for _ in range(6):  # 500 x 1,819 B = 909,500 is under 1 MiB: the 6th is taken
        got = d.post("/v1/queues/q/messages", batch)
        assert got.status == 202, got.body
    status, sentence = error_of(d, "POST", "/v1/queues/q/messages", batch)
    assert status == 429
    # a header costs its dict (184), its entry (24), its name (49 + 1), its value (49 + 1000)
    assert sentence == (
        "memory budget exhausted: 600 queued messages hold 307200 bytes (512 bytes a "
        "message), their headers 784200 bytes: 1091400 bytes of 1048576 besides the "
        "bodies; publish refused until consumers catch up")
    pulled = d.ok("POST", "/v1/queues/q/pull", {"max": 1000})["messages"]
    d.ok("POST", "/v1/queues/q/ack", {"delivery_ids": [m["delivery_id"] for m in pulled]})
    assert d.post("/v1/queues/q/messages", batch).status == 202  # acks gave it back


def test_remembered_message_ids_count_in_the_memory_budget(
    start_daemon: Callable[..., Daemon],
) -> None:
    """Each distinct message id is remembered for the dedup window (384 B + its text
    counted) after its message is gone: a flood of ids fills the budget and is refused
    with 429 (before: up to 1,000,000 ids, ~550 MB, outside the budget)."""
    d = start_daemon(QUEUE, args=["--memory-budget", "1MiB", "--fsync", "never"])
    n = 0
    for _ in range(6):  # 500 ids of 9 characters: 196,500 B a batch, 6 fill 1 MiB
        batch = [{"body": 1, "message_id": f"id-{n + i:06d}"} for i in range(500)]
        n += 500
        assert d.post("/v1/queues/q/messages", {"messages": batch}).status == 202
        pulled = d.ok("POST", "/v1/queues/q/pull", {"max": 1000})["messages"]
        assert len(pulled) == 500
        d.ok("POST", "/v1/queues/q/ack",
             {"delivery_ids": [m["delivery_id"] for m in pulled]})
    status, sentence = error_of(d, "POST", "/v1/queues/q/messages",
                                {"messages": [{"body": 1, "message_id": "one-more"}]})
    assert status == 429
    assert sentence == (
        "memory budget exhausted: 0 queued messages hold 0 bytes (512 bytes a message), "
        "3000 message ids remembered for deduplication 1179000 bytes: 1179000 bytes of "
        "1048576 besides the bodies; publish refused until consumers catch up or "
        "remembered message ids leave the dedup window")


# ---------------------------------------------------------------- handler fanout

FANOUT = "\n".join([
    "version: 1",
    "name: e2e-handler-fanout",
    "exchanges:",
    "  wide: {type: fanout}",
    "queues:",
    "  alo-in: {}",
    "  eo-in: {}",
    "  dead: {}",
    *(f"  w{i}: {{}}" for i in range(20)),
    "bindings:",
    *(f"  - {{exchange: wide, queue: w{i}}}" for i in range(20)),
    "dlq_policies:",
    "  once: {max_retries: 1, backoff: [50ms], dead_letter_queue: dead}",
    "consumers:",
    "  alo: {queue: alo-in, handler: 'spray:spray', delivery: at-least-once, "
    "dlq_policy: once}",
    "  eo: {queue: eo-in, handler: 'spray:spray', delivery: exactly-once, dlq_policy: once}",
    "",
])
SPRAY = '''\
def spray(msg, ctx):
    for i in range(msg.body["n"]):
        ctx.publish("wide", "", {"i": i})
'''


def _depth(d: Daemon, queue: str) -> int:
    return int(next(q["ready"] for q in d.ok("GET", "/v1/queues")["queues"]
                    if q["name"] == queue))


@pytest.mark.parametrize("queue", ["alo-in", "eo-in"])
def test_a_handler_whose_publishes_pass_max_fanout_fails_its_delivery(
    start_daemon: Callable[..., Daemon], queue: str,
) -> None:
    """10 messages through a 20-queue fanout exchange are 200 copies, over
    --max-fanout 100: the delivery fails (retried, then dead-lettered with the error),
    nothing is stored; 5 messages (100 copies) pass. Before, handler publishes were
    not capped: all 200 copies were stored."""
    d = start_daemon(FANOUT, modules={"spray": SPRAY}, args=["--max-fanout", "100"])
    d.ok("POST", f"/v1/queues/{queue}/messages", {"body": {"n": 10}}, 202)
    wait_for(lambda: _depth(d, "dead") == 1, 20)
    dead = d.ok("GET", "/v1/queues/dead/peek")["messages"][0]
    error = dead["headers"]["x-dead-letter"]["error"]
    assert error["type"] == "runner.errors.FanoutTooLarge"
    assert error["message"] == (
        "the handler's outputs would create 200 message copies (10 messages through "
        "exchange 'wide', up to 20 destinations each), over the limit of 100 a handler "
        "call (--max-fanout); nothing of them was stored: publish fewer messages a call")
    assert dead["headers"]["x-dead-letter"]["retry_count"] == 1
    assert _depth(d, "w0") == 0  # nothing of either attempt was stored
    d.ok("POST", f"/v1/queues/{queue}/messages", {"body": {"n": 5}}, 202)
    wait_for(lambda: _depth(d, "w19") == 5, 20)
    assert _depth(d, "dead") == 1
