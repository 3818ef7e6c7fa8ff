"""Fuzzing every HTTP route of the real daemon (issue 17): random JSON bodies (and the
shapes the routes expect, with random values), query strings, names in the path,
raw bytes and odd headers. No answer may be a 5xx, every refusal is a JSON
`{"error"}`, and the daemon stays healthy (and its log free of unexpected errors).

The route list is read from the application `build_app` + `install_console` build,
so a route added later is fuzzed too. The budget (examples per route) keeps the
whole module to a few seconds of requests in `make test`; FUZZ_EXAMPLES raises it.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import Daemon, module_daemon

pytestmark = pytest.mark.e2e

TOKEN = "fuzz-token"
TOPOLOGY = """\
version: 1
name: e2e-fuzz
topics:
  t: {partitions: 2}
  c: {partitions: 1, cleanup_policy: compact}
exchanges:
  x: {type: topic}
  h: {type: headers}
  f: {type: fanout}
queues:
  q: {max_priority: 5}
  lim: {max_length: 3, overflow: reject-publish}
  dlq: {}
bindings:
  - {exchange: x, queue: q, routing_key: "a.#"}
  - {exchange: f, queue: q}
  - {exchange: f, queue: dlq}
  - {exchange: f, topic: t}
  - {exchange: h, queue: lim, match: any, headers: {k: v}}
consumer_groups:
  g: {topics: [t]}
"""
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
NAMES = ["q", "lim", "dlq", "x", "h", "f", "t", "c", "g", "nope", "", "..", "%2e%2e",
         "a/b", "é", "__consumer_offsets"]
QUERY_KEYS = ["n", "offset", "limit", "max", "partition", "topic", "since", "x"]
FIELDS = ["body", "body_b64", "value", "value_b64", "key", "key_b64", "headers",
          "routing_key", "priority", "ttl", "message_id", "partition", "timestamp",
          "messages", "records", "delivery_ids", "requeue", "max", "lease", "consumer_id",
          "to", "topic", "offset", "offsets", "to_earliest", "to_latest", "to_offset",
          "to_datetime", "dry_run", "token"]


def _routes() -> list[tuple[str, str]]:
    from runner.clock import SystemClock
    from runner.daemon import codec
    from runner.daemon.console import ConsoleMode
    from runner.daemon.console.routes import install_console
    from runner.daemon.http import build_app

    app = build_app(cast(Any, None), token=TOKEN, limits=codec.Limits(), max_request_bytes=1)
    install_console(app, cast(Any, None), token=TOKEN, mode=ConsoleMode.READ_WRITE,
                    clock=SystemClock())
    found = {(r.method, r.resource.canonical) for r in app.router.routes()
             if r.resource is not None and r.method != "HEAD"}
    return sorted(found, key=lambda mr: (mr[1], mr[0]))


ROUTES = _routes()

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["30s", "0s", "1h", "-1s", "9" * 30 + "d", "a.b", "", "__x", "AAAA"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), inner,
                      max_size=4),
    max_leaves=12,
)
shaped = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5)
batches = st.fixed_dictionaries({
    "messages": st.lists(shaped, max_size=3),
}) | st.fixed_dictionaries({"records": st.lists(shaped, max_size=3)}) | st.fixed_dictionaries(
    {"offsets": st.lists(shaped, max_size=3)})
bodies = st.one_of(
    st.none(),
    json_values.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),
    batches.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
)
queries = st.dictionaries(
    st.sampled_from(QUERY_KEYS),
    st.one_of(st.integers(-5, 2**65).map(str), st.text(max_size=6)), max_size=3,
)
segments = st.one_of(st.sampled_from(NAMES), st.text(max_size=8))
headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "text/plain", "x/y; charset=zz"]),
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "identity", "br"]),
    "Origin": st.sampled_from(["http://evil.example", "null"]),
})


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("fuzz"), TOPOLOGY, token=TOKEN,
                             # not about durability: no fsync stalls under a loaded machine
                             args=["--max-request-bytes", "64KiB", "--no-watch",
                                   "--fsync", "never"])


@pytest.fixture(scope="module")
def session(daemon: Daemon) -> dict[str, str]:
    """Cookie and CSRF headers of a console session (the console routes get past the
    gate too)."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    try:
        conn.request("POST", "/ui/api/login", json.dumps({"token": TOKEN}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        cookie = resp.getheader("Set-Cookie", "").split(";")[0]
    finally:
        conn.close()
    assert resp.status == 200 and cookie, body
    return {"Cookie": cookie, "X-CSRF-Token": body["csrf"]}


def send(d: Daemon, method: str, path: str, body: bytes | None,
         extra: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    try:
        conn.request(method, path, body, extra)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _path(template: str, names: list[str]) -> str:
    parts = []
    for part in template.split("/"):
        if part.startswith("{") and part.endswith("}"):
            parts.append(urllib.parse.quote(names.pop() if names else "q", safe=""))
        else:
            parts.append(part)
    return "/".join(parts)


def test_the_fuzzed_routes_are_every_route_of_the_app() -> None:
    paths = {p for _, p in ROUTES}
    assert {"/v1/queues/{name}/messages", "/v1/topics/{name}/records", "/metrics",
            "/ui/api/dlq/{name}/replay", "/v1/admin/reload"} <= paths
    assert len(ROUTES) >= 45


@pytest.mark.parametrize("method,template", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_no_input_to_a_route_gets_a_5xx(
    daemon: Daemon, session: dict[str, str], method: str, template: str
) -> None:
    if template == "/ui/api/events":  # an endless stream: only the gate is fuzzed
        status, _, _ = send(daemon, "GET", template, None, {})
        assert status == 401
        return
    examples = 3 if template == "/ui/api/login" else EXAMPLES  # a wrong token costs 0.25 s

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(names=st.lists(segments, min_size=2, max_size=2), query=queries, body=bodies,
           extra=headers, authorized=st.booleans())
    def fuzz(names: list[str], query: dict[str, str], body: bytes | None,
             extra: dict[str, str], authorized: bool) -> None:
        path = _path(template, list(names))
        if query:
            path += "?" + urllib.parse.urlencode(query)
        sent = dict(extra)
        if authorized:
            sent["Authorization"] = f"Bearer {TOKEN}"
            if template.startswith("/ui/api/") and template != "/ui/api/logout":
                sent.update(session)
        if body is None and "Content-Encoding" in sent:
            del sent["Content-Encoding"]
        if method == "GET":
            body = None
        status, got, raw = send(daemon, method, path, body, sent)
        assert status < 500, (method, path, body, sent, status, raw[:300])
        if status >= 400 and raw:
            assert got.get("content-type", "").startswith("application/json"), (path, raw)
            assert "error" in json.loads(raw), (path, raw)

    fuzz()
    assert daemon.get("/healthz").status == 200


def test_random_paths_and_methods_get_4xx(daemon: Daemon) -> None:
    @settings(max_examples=EXAMPLES * 3, deadline=None, database=None)
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
           parts=st.lists(segments, min_size=1, max_size=5))
    def fuzz(method: str, parts: list[str]) -> None:
        path = "/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)
        status, _, raw = send(daemon, method, path, None, {"Authorization": f"Bearer {TOKEN}"})
        assert status < 500, (method, path, status, raw[:300])

    fuzz()


def test_the_daemon_survived_the_fuzzing(daemon: Daemon) -> None:
    assert daemon.running
    assert daemon.get("/readyz").status == 200
    log = daemon.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
