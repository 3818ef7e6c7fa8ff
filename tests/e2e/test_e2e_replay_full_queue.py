"""Issue 8: replaying dead letters into their original queue when it is full, on a
real daemon, for each overflow mode. Nothing is lost or duplicated: a queue that
refuses (`reject-publish`, `reject-publish-dlx`) keeps its letters in the DLQ,
in order, counted in `refused` with a sentence naming the queue and its limit,
and a later replay (after room is made) brings them back; a `drop-head` queue
takes them and dead-letters its oldest messages for room, as RabbitMQ does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.e2e

MODES = ("reject-publish", "reject-publish-dlx", "drop-head")
TOPOLOGY = "version: 1\nname: replay-full\nexchanges:\n" + "".join(
    f"  dlx_{i}: {{type: fanout}}\n" for i in range(3)) + "queues:\n" + "".join(
    f"  q{i}: {{max_length: 2, overflow: {mode}, dead_letter: {{exchange: dlx_{i}}}}}\n"
    f"  dlq{i}: {{}}\n" for i, mode in enumerate(MODES)) + "bindings:\n" + "".join(
    f"  - {{exchange: dlx_{i}, queue: dlq{i}}}\n" for i in range(3))


def _bodies(d: Daemon, queue: str) -> list[Any]:
    return [m["body"] for m in d.ok("GET", f"/v1/queues/{queue}/peek?n=100")["messages"]]


def _reasons(d: Daemon, queue: str) -> list[str]:
    return [m["headers"]["x-dead-letter"]["reason"]
            for m in d.ok("GET", f"/v1/queues/{queue}/peek?n=100")["messages"]]


def _dead_letters_then_full(d: Daemon, q: str) -> None:
    """m1 and m2 die in `q` (rejected), then f1 and f2 fill it."""
    for body in ("m1", "m2"):
        d.ok("POST", f"/v1/queues/{q}/messages", {"body": body}, status=202)
    got = d.ok("POST", f"/v1/queues/{q}/pull", {"max": 2})["messages"]
    d.ok("POST", f"/v1/queues/{q}/nack",
         {"delivery_ids": [m["delivery_id"] for m in got], "requeue": False})
    for body in ("f1", "f2"):
        d.ok("POST", f"/v1/queues/{q}/messages", {"body": body}, status=202)


@pytest.mark.parametrize(("i", "mode"), [(0, "reject-publish"), (1, "reject-publish-dlx")])
def test_a_full_refusing_queue_keeps_the_dead_letters_in_the_dlq(
    start_daemon: Callable[..., Daemon], i: int, mode: str,
) -> None:
    d = start_daemon(TOPOLOGY)
    q, dlq = f"q{i}", f"dlq{i}"
    _dead_letters_then_full(d, q)
    assert _bodies(d, dlq) == ["m1", "m2"]

    out = d.ok("POST", f"/v1/queues/{dlq}/replay", {})
    why = (f"original queue '{q}' is full (max_length 2, overflow {mode}): kept in the "
           "dead-letter queue for a later replay")
    assert out == {"replayed": 0, "skipped": 2, "skipped_reasons": {why: 2}, "refused": 2,
                   "remaining": 2}
    # nothing lost, nothing dead-lettered again, nothing duplicated
    assert _bodies(d, dlq) == ["m1", "m2"] and _reasons(d, dlq) == ["rejected", "rejected"]
    assert _bodies(d, q) == ["f1", "f2"]
    cli = d.cli("dlq", "replay", dlq)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.splitlines() == [f"replayed 0 message(s) from {dlq}",
                                       f"kept 2 message(s) in {dlq}:", f"  2: {why}"]

    # room for one: the first goes back, the second waits (order kept)
    got = d.ok("POST", f"/v1/queues/{q}/pull", {"max": 1})["messages"]
    d.ok("POST", f"/v1/queues/{q}/ack", {"delivery_ids": [got[0]["delivery_id"]]})
    out = d.ok("POST", f"/v1/queues/{dlq}/replay", {})
    assert (out["replayed"], out["refused"], out["remaining"]) == (1, 1, 1)
    assert _bodies(d, q) == ["f2", "m1"] and _bodies(d, dlq) == ["m2"]


def test_a_full_drop_head_queue_takes_them_and_dead_letters_its_head(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(TOPOLOGY)
    _dead_letters_then_full(d, "q2")
    out = d.ok("POST", "/v1/queues/dlq2/replay", {})
    assert out == {"replayed": 2, "skipped": 0, "skipped_reasons": {}, "refused": 0,
                   "remaining": 2}
    # the replayed letters are the newest; the fillers were dropped from the head
    assert _bodies(d, "q2") == ["m1", "m2"]
    assert _bodies(d, "dlq2") == ["f1", "f2"] and _reasons(d, "dlq2") == ["maxlen", "maxlen"]
