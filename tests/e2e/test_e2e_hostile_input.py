"""Hostile input against the real daemon (issue 17): integers past 64 bits, unbounded
arrays and amounts, decompression bombs, durations past their limit.

Each case was a 5xx, a poisoned queue or a stall before; now it is stored exactly
or refused with a 4xx sentence naming the field. One daemon is shared by the module.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon, error_of, module_daemon

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: e2e-hostile
topics:
  events: {partitions: 1}
  routed: {partitions: 1}
exchanges:
  x: {type: fanout}
  tx: {type: topic}
queues:
  pq: {}
  fanned: {}
  target: {}
  dead: {}
  paged: {}
bindings:
  - {exchange: x, queue: fanned}
  - {exchange: tx, topic: routed, routing_key: "#"}
consumer_groups:
  ext: {topic: events}
"""

HUGE = 18446744073709551616  # 2**64: one past what orjson reads as an integer
HUGER = 123456789012345678901234567890


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("hostile"), TOPOLOGY,
                             args=["--max-request-bytes", "1MiB"])


def drain(d: Daemon, queue: str) -> list[dict[str, object]]:
    """Pull and ack everything in `queue`; the messages pulled."""
    got = d.ok("POST", f"/v1/queues/{queue}/pull", {"max": 1000})["messages"]
    if got:
        d.ok("POST", f"/v1/queues/{queue}/ack",
             {"delivery_ids": [m["delivery_id"] for m in got]})
    return got


# ------------------------------------------------------------- integers past 64 bits


def test_a_header_past_64_bits_is_stored_exactly_and_never_jams_the_queue(d: Daemon) -> None:
    raw = b'{"body": 1, "headers": {"a": 18446744073709551616, "n": [-99999999999999999999]}}'
    assert d.post("/v1/queues/pq/messages", raw=raw).status == 202
    d.ok("POST", "/v1/queues/pq/messages", {"body": "good one behind it"}, 202)
    peeked = d.get("/v1/queues/pq/peek?n=10")
    assert peeked.status == 200
    assert b'"a":18446744073709551616' in peeked.raw and b"-99999999999999999999" in peeked.raw
    got = d.ok("POST", "/v1/queues/pq/pull", {"max": 10})["messages"]
    assert [m["body"] for m in got] == [1, "good one behind it"]
    assert got[0]["headers"] == {"a": HUGE, "n": [-99999999999999999999]}
    d.ok("POST", "/v1/queues/pq/ack", {"delivery_ids": [m["delivery_id"] for m in got]})


@pytest.fixture
def d(daemon: Daemon) -> Daemon:
    return daemon


def test_bodies_past_64_bits_come_back_exactly_on_every_route(d: Daemon) -> None:
    body = f'{{"n": {HUGER}, "m": [-{HUGER}, 1.5, 18446744073709551615]}}'
    raw = f'{{"body": {body}}}'.encode()
    assert d.post("/v1/queues/pq/messages", raw=raw).status == 202
    raw = f'{{"routing_key": "", "body": {body}, "headers": {{"h": {HUGE}}}}}'.encode()
    assert d.post("/v1/exchanges/x/messages", raw=raw).status == 202
    raw = f'{{"routing_key": "k", "body": {body}, "headers": {{"h": {HUGE}}}}}'.encode()
    assert d.post("/v1/exchanges/tx/messages", raw=raw).status == 202
    raw = f'{{"records": [{{"value": {body}, "headers": {{"h": {HUGE}}}}}]}}'.encode()
    assert d.post("/v1/topics/events/records", raw=raw).status == 202
    expected = json.loads(body)
    assert drain(d, "pq")[0]["body"] == expected
    fanned = drain(d, "fanned")[0]
    assert fanned["body"] == expected and fanned["headers"] == {"h": HUGE}
    for topic in ("events", "routed"):
        got = d.get(f"/v1/topics/{topic}/partitions/0/records?offset=0")
        assert got.status == 200, got.body
        (rec,) = got.body["records"]
        assert rec["value"] == expected and rec["headers"]["h"] == HUGE
        assert f"{HUGER}".encode() in got.raw


@pytest.mark.parametrize("raw", [
    b'{"body": [1e400, 12345678901234567890123]}',
    b'{"body": [NaN, 12345678901234567890123]}',
    b'{"body": [Infinity, 12345678901234567890123]}',
    b'{"body": 1, "headers": {"a": -1e999, "b": 12345678901234567890123}}',
])
def test_non_finite_numbers_are_400_in_the_exact_path_too(d: Daemon, raw: bytes) -> None:
    status, message = error_of(d, "POST", "/v1/queues/pq/messages", raw=raw)
    assert status == 400 and message.startswith("the request body is not valid JSON: ")


def test_an_integer_of_more_than_4300_digits_is_400(d: Daemon) -> None:
    raw = b'{"body": ' + b"7" * 5000 + b"}"
    status, message = error_of(d, "POST", "/v1/queues/pq/messages", raw=raw)
    assert status == 400 and message.startswith("the request body is not valid JSON: ")


# ------------------------------------------------------------- durations


@pytest.mark.parametrize("path,body,field", [
    ("/v1/queues/pq/pull", {"lease": "9" * 400 + "s"}, "'lease'"),
    ("/v1/queues/pq/pull", {"lease": "366d"}, "'lease'"),
    ("/v1/queues/pq/messages", {"body": 1, "ttl": "9" * 400 + "s"}, "'ttl'"),
    ("/v1/queues/pq/messages", {"messages": [{"body": 1}, {"body": 1, "ttl": "53w"}]},
     "message 1: 'ttl'"),
])
def test_a_duration_past_one_year_is_400_naming_the_field(
    d: Daemon, path: str, body: object, field: str
) -> None:
    status, message = error_of(d, "POST", path, body)
    assert status == 400
    assert message.startswith(f"{field}: duration ")
    assert message.endswith("is longer than the limit of 365d")


def test_a_duration_of_one_year_is_fine(d: Daemon) -> None:
    d.ok("POST", "/v1/queues/pq/messages", {"body": "y", "ttl": "365d"}, 202)
    got = d.ok("POST", "/v1/queues/pq/pull", {"lease": "52w"})["messages"]
    assert [m["body"] for m in got] == ["y"]
    d.ok("POST", "/v1/queues/pq/ack", {"delivery_ids": [got[0]["delivery_id"]]})


# ------------------------------------------------------------- arrays and amounts


@pytest.mark.parametrize("verb", ["ack", "nack"])
def test_more_than_10000_delivery_ids_is_413(d: Daemon, verb: str) -> None:
    status, message = error_of(d, "POST", f"/v1/queues/pq/{verb}",
                               {"delivery_ids": list(range(10_001))})
    assert (status, message) == (
        413, "the batch holds 10001 delivery_ids, over the limit of 10000 a request; "
             "split it into smaller batches")


def test_more_than_10000_offsets_in_a_commit_is_413(d: Daemon) -> None:
    item = {"topic": "events", "partition": 0, "offset": 0}
    status, message = error_of(d, "POST", "/v1/groups/ext/commit",
                               {"offsets": [item] * 10_001})
    assert (status, message) == (
        413, "the batch holds 10001 offsets, over the limit of 10000 a request; "
             "split it into smaller batches")


def test_a_409_names_at_most_20_unknown_ids_and_lists_them_all_once(d: Daemon) -> None:
    ids = list(range(10_000, 10_000 + 500))
    answer = d.post("/v1/queues/pq/ack", {"delivery_ids": ids})
    assert answer.status == 409
    assert answer.body["unknown"] == ids and answer.body["acked"] == 0
    shown = ", ".join(str(i) for i in ids[:20])
    assert answer.body["error"] == (
        f"500 delivery id(s) of queue 'pq' are unknown or their lease expired: {shown} "
        "and 480 more (all in 'unknown'); the other 0 were acked")
    assert len(answer.raw) < 8_000


def dead_letter(n: int) -> dict[str, object]:
    return {"body": n, "headers": {"x-dead-letter": {
        "reason": "rejected", "original_queue": "target", "count": 1}}}


def test_replay_is_capped_at_10000_a_request_and_says_what_remains(d: Daemon) -> None:
    status, message = error_of(d, "POST", "/v1/queues/dead/replay", {"max": 10_001})
    assert (status, message) == (
        400, "'max' must be an integer between 1 and 10000, got 10001")
    status, message = error_of(d, "POST", "/v1/queues/dead/replay", {"mx": 1})
    assert status == 400 and message.startswith("unknown field 'mx'")
    d.ok("POST", "/v1/queues/dead/messages", {"messages": [dead_letter(i) for i in range(5)]},
         202)
    assert d.ok("POST", "/v1/queues/dead/replay", {"max": 2}) == {
        "replayed": 2, "skipped": 0, "skipped_reasons": {}, "refused": 0, "remaining": 3}
    assert d.ok("POST", "/v1/queues/dead/replay", {}) == {
        "replayed": 3, "skipped": 0, "skipped_reasons": {}, "refused": 0, "remaining": 0}
    assert [m["body"] for m in drain(d, "target")] == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_the_cli_replays_more_than_one_page(d: Daemon) -> None:
    total = 10_050
    for start in range(0, total, 5_000):
        batch = [dead_letter(i) for i in range(start, min(total, start + 5_000))]
        d.ok("POST", "/v1/queues/paged/messages", {"messages": batch}, 202)
    started = time.monotonic()
    done = d.cli("dlq", "replay", "paged")
    assert (done.returncode, done.stdout) == (0, f"replayed {total} message(s) from paged\n")
    assert time.monotonic() - started < 60
    assert d.ok("GET", "/v1/queues/paged/peek")["messages"] == []
    pulled = 0
    while got := drain(d, "target"):
        pulled += len(got)
    assert pulled == total


# ------------------------------------------------------------- compressed bodies


def bomb(expanded: int) -> bytes:
    """A valid zlib stream of `{"body": "000..."}` with `expanded` zeros (a multiple of
    1 MiB). Each MiB is compressed once: after a full flush the compressor starts afresh,
    so every MiB compresses to the same bytes, which are repeated; the stream ends with a
    raw final block for the tail and the Adler-32 of everything (1 GiB: 0.3 s, not 3 s)."""
    head, tail, zeros = b'{"body": "', b'"}', b"0" * (1 << 20)
    c = zlib.compressobj(9)
    start = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    chunk = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = end.compress(tail) + end.flush()
    check = zlib.adler32(head)
    for _ in range(expanded >> 20):
        check = zlib.adler32(zeros, check)
    check = zlib.adler32(tail, check)
    return start + chunk * (expanded >> 20) + last + check.to_bytes(4, "big")


def test_the_bomb_is_a_valid_zlib_stream_of_its_size() -> None:
    data = bomb(3 << 20)
    assert zlib.decompress(data) == b'{"body": "' + b"0" * (3 << 20) + b'"}'


def peak_rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("VmHWM"))


def test_a_deflate_bomb_is_413_before_it_expands_past_the_limit(
    start_daemon: Callable[..., Daemon]
) -> None:
    limit = 32 << 20
    big = start_daemon(TOPOLOGY, args=["--max-request-bytes", "32MiB"])
    assert big.proc is not None
    data = bomb(1 << 30)  # 1 GiB of JSON in ~1 MB
    assert len(data) < 2 << 20
    before = peak_rss_kb(big.proc.pid)
    started = time.monotonic()
    status, message = error_of(big, "POST", "/v1/queues/pq/messages", raw=data,
                               headers={"Content-Encoding": "deflate"})
    assert time.monotonic() - started < 5
    assert (status, message) == (
        413, f"the request body is over the limit of {limit} bytes; send smaller batches, "
             "or store large payloads elsewhere and send a reference")
    grown = (peak_rss_kb(big.proc.pid) - before) * 1024
    assert grown < 1.5 * limit, f"peak grew {grown >> 20} MiB for a {limit >> 20} MiB limit"
    assert big.get("/healthz").status == 200


def test_a_small_gzip_body_still_works(d: Daemon) -> None:
    import gzip
    data = gzip.compress(json.dumps({"body": {"zipped": True}}).encode())
    got = d.post("/v1/queues/pq/messages", raw=data, headers={"Content-Encoding": "gzip"})
    assert got.status == 202, got.body
    assert [m["body"] for m in drain(d, "pq")] == [{"zipped": True}]


# ------------------------------------------------------------- names


@pytest.mark.parametrize("body,prefix", [
    ({"body": 1, "message_id": "__e1-0"}, ""),
    ({"messages": [{"body": 1}, {"body": 1, "message_id": "__x"}]}, "message 1: "),
])
def test_a_message_id_starting_with_two_underscores_is_reserved(
    d: Daemon, body: object, prefix: str
) -> None:
    status, message = error_of(d, "POST", "/v1/queues/pq/messages", body)
    assert status == 400
    assert message.startswith(f"{prefix}'message_id' \"__")
    assert message.endswith('starts with "__", which is reserved for the engine\'s own ids; '
                            "choose another id")
