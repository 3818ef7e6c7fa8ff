"""The console in real browsers (headless Chromium via Selenium, Firefox via WebDriver
BiDi; each test runs in both) over a real daemon: the flow graph, live depth, a dead
letter from stack trace to replay, an offset reset with its dry run, the token gate,
escaping, read-only, and a screenshot of each page."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.console.conftest import Page, save_measure
from tests.console.topology import ENTITIES, shared, start
from tests.e2e.conftest import Daemon, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, browser):  # type: ignore[no-untyped-def]
    """One daemon for the tests whose changes do not meet (each its own queue or group),
    and one for each browser (so each sees the same start)."""
    yield from shared(tmp_path_factory)

PageFor = Callable[[Daemon], Page]


def test_flow_graph_renders_every_declared_entity_and_filters(daemon, page_for) -> None:
    d = daemon
    page = page_for(d)
    page.open("flow")
    nodes = page.wait(lambda: page.css("svg.flow g.node"))
    shown: dict[str, set[str]] = {}
    for node in nodes:
        shown.setdefault(node.get_attribute("data-kind"), set()).add(
            node.get_attribute("data-name"))
    assert shown == ENTITIES
    dlqs = {n.get_attribute("data-name") for n in page.css("svg.flow g.node.dlq")}
    assert dlqs == {"payments.dlq", "audit.dlq"}
    assert len(page.css("svg.flow path.edge")) >= 8
    labels = page.js("""return Array.from(document.querySelectorAll('text.edge-label'), (t) => {
        const r = t.getBoundingClientRect();
        return [t.textContent, r.left, r.top, r.right, r.bottom]; });""")
    assert sorted(t for t, *_ in labels) == ["orders.#", "orders.paid", "pay"]
    overlapping = [(a[0], b[0]) for i, a in enumerate(labels) for b in labels[i + 1:]
                   if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]]
    assert overlapping == [], labels
    # live numbers on the nodes
    page.wait(lambda: "ready" in page.text("g.node[data-name='shipping'] .node-metric"))
    page.screenshot("flow")
    # filter by name: matches highlighted, unrelated nodes dimmed
    box = page.one("input.filter")
    box.send_keys("payments")
    page.wait(lambda: len(page.css("g.node.match")) == 3)
    matched = {n.get_attribute("data-name") for n in page.css("g.node.match")}
    assert matched == {"payments", "payments-q", "payments.dlq"}
    assert "reporting" in {n.get_attribute("data-name") for n in page.css("g.node.dim")}
    # zoom changes the stage's scale; a click opens the entity's page
    before = page.js("return document.querySelector('svg.flow > g').getAttribute('transform')")
    page.css(".toolbar button[title='zoom in']")[0].click()
    after = page.js("return document.querySelector('svg.flow > g').getAttribute('transform')")
    assert before != after
    page.js("document.querySelector(\"g.node[data-name='shipping']\")"
            ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    page.wait_route("queues/shipping")
    assert page.text("h1") == "Queue shipping"


def test_flow_graph_zooms_with_the_wheel_and_pans_with_a_drag(daemon, page_for) -> None:
    """Real input (not dispatched events): wheel zoom and drag pan, in each browser."""
    page = page_for(daemon)
    page.open("flow")
    svg = page.one("svg.flow")
    page.wait(lambda: page.css("svg.flow g.node"))

    def view() -> tuple[float, float, float]:
        t = page.js("return document.querySelector('svg.flow > g').getAttribute('transform')")
        m = re.fullmatch(r"translate\(([-\d.e]+),([-\d.e]+)\) scale\(([-\d.e]+)\)", t)
        assert m, t
        return float(m[1]), float(m[2]), float(m[3])

    x0, y0, k0 = view()
    # an empty spot of the stage, below the nodes (a press on a node does not pan)
    spot = (0, 150)
    assert page.js("const r = arguments[0].getBoundingClientRect();"
                   "const e = document.elementFromPoint(r.left + r.width / 2 + arguments[1],"
                   " r.top + r.height / 2 + arguments[2]);"
                   "return e === arguments[0] || !e.closest('.node');", svg, *spot)
    page.wheel(svg, -120)
    page.wait(lambda: view()[2] > k0)
    x1, y1, k1 = view()
    assert k1 == pytest.approx(k0 * 1.15, rel=1e-3)  # one notch, whatever the wheel's unit
    page.wheel(svg, 120)
    page.wait(lambda: view()[2] < k1)
    x2, y2, k2 = view()
    assert k2 == pytest.approx(k0, rel=1e-3)
    page.drag(svg, *spot, 80, -40)
    page.wait(lambda: view()[:2] != (x2, y2))
    x3, y3, k3 = view()
    assert (round(x3 - x2), round(y3 - y2), k3) == (80, -40, k2)
    assert "dragging" not in (svg.get_attribute("class") or "")


def test_flow_graph_by_keyboard_filter_enter_fits_matches_and_enter_opens_a_node(
    daemon, page_for
) -> None:
    """Real key presses in each browser: Enter in the filter zooms to the matches; the
    nodes take the focus (tabindex 0), and Enter on one opens its page."""
    from selenium.webdriver.common.keys import Keys

    page = page_for(daemon)
    page.open("flow")
    page.wait(lambda: page.css("svg.flow g.node"))
    stage = "return document.querySelector('svg.flow > g').getAttribute('transform')"
    before = page.js(stage)
    page.one("input.filter").send_keys("audit" + Keys.ENTER)
    page.wait(lambda: page.js(stage) != before)
    # the matches (audit, audit.dlq, auditor) fill the view: all inside the stage's box
    inside = page.js("""
        const box = document.querySelector('svg.flow').getBoundingClientRect();
        return Array.from(document.querySelectorAll('g.node.match')).map((n) => {
          const r = n.getBoundingClientRect();
          return r.left >= box.left - 1 && r.right <= box.right + 1
            && r.top >= box.top - 1 && r.bottom <= box.bottom + 1; });""")
    assert inside and all(inside), inside
    node = page.one("g.node[data-name='shipping']")
    assert node.get_attribute("tabindex") == "0"
    page.js("arguments[0].focus()", node)
    assert page.js("return document.activeElement.dataset.name") == "shipping"
    node.send_keys(Keys.ENTER)
    page.wait_route("queues/shipping")
    assert page.text("h1") == "Queue shipping"


def test_an_element_that_left_the_page_is_stale_in_each_browser(daemon, page_for) -> None:
    """_click's retry (and Page.wait's) rely on a re-rendered element raising
    StaleElementReferenceException, in Selenium's Chromium and in the BiDi driver."""
    from selenium.common.exceptions import StaleElementReferenceException

    page = page_for(daemon)
    page.open("queues")
    row = page.one("#queues-table tr[data-name='shipping']")
    assert "shipping" in row.text
    page.js("arguments[0].remove()", row)
    with pytest.raises(StaleElementReferenceException):
        _ = row.text


def test_the_browser_log_reports_errors_so_a_clean_log_means_something(
    daemon, page_for
) -> None:
    """Every page_for test ends by asserting an empty error log; in each browser the log
    must catch a console.error, an uncaught exception and a failed request."""
    page = page_for(daemon)
    page.open("overview")
    page.wait(lambda: page.text(".card .pill") == "healthy")
    assert page.console_errors() == []
    page.js("console.error('probe: console.error')")
    page.js("setTimeout(() => { throw new Error('probe: uncaught'); }, 0)")
    page.js("fetch('/ui/api/probe-no-such-call')")
    seen: list[str] = []

    def all_three() -> bool:
        seen.extend(page.console_errors())
        text = "\n".join(seen)
        return all(probe in text for probe in (
            "probe: console.error", "probe: uncaught", "/ui/api/probe-no-such-call"))

    page.wait(all_three)
    assert any(" 404 " in line for line in seen if "probe-no-such-call" in line), seen


def test_a_published_message_shows_in_the_queue_depth_live(daemon, page_for) -> None:
    d = daemon
    page = page_for(d)
    page.open("queues")
    row = "#queues-table tr[data-name='shipping']"
    page.wait(lambda: page.text(f"{row} td:nth-child(2)") == "0")
    page.js("window.__sameDocument = true")
    for i in range(3):
        d.ok("POST", "/v1/exchanges/orders/messages",
             {"routing_key": "orders.paid", "body": {"order_id": f"o{i}"}}, status=202)
    page.wait(lambda: page.text(f"{row} td:nth-child(2)") == "3", timeout_s=6)
    assert page.js("return window.__sameDocument") is True  # no reload: the event stream
    assert page.misaligned_tables() == []
    page.screenshot("queues")
    page.open("queues/shipping", fresh=False)
    page.wait(lambda: len(page.css("article.message")) == 3)
    page.screenshot("queue")
    assert d.ok("GET", "/v1/queues/shipping/peek?n=10")["messages"].__len__() == 3


def test_dead_letter_shows_its_stack_trace_and_replays_from_the_console(
    start_daemon, page_for
) -> None:
    d = start(start_daemon)
    (d.workdir / "gateway-down").write_text("")
    d.ok("POST", "/v1/exchanges/payments/messages",
         {"routing_key": "pay", "body": {"order": "o-17", "amount": 12}}, status=202)
    page = page_for(d)
    page.open("dlq")
    page.wait(lambda: page.text("#dlq-table tr[data-name='payments.dlq'] td:nth-child(3)") == "1")
    assert page.misaligned_tables() == []
    page.screenshot("dead-letters")
    page.one("#dlq-table a[href='#/dlq/payments.dlq']").click()
    page.wait_route("dlq/payments.dlq")
    letter = page.one("article.letter")
    assert page.text("article.letter .reason") == "handler_error"
    assert page.text("article.letter .error-line") == (
        "console_handlers.GatewayDown: payment gateway down for {'order': 'o-17', 'amount': 12}")
    stack = page.text("article.letter pre.stack")
    assert "Traceback (most recent call last)" in stack
    assert "in charge" in stack and "console_handlers.py" in stack
    assert "queue payments-q via exchange payments key pay" in letter.text
    page.screenshot("dead-letter")
    (d.workdir / "gateway-down").unlink()  # the gateway is back: the replay succeeds
    page.one("article.letter button.replay-one").click()
    page.wait(lambda: "Replayed 1 dead letter(s)." in page.text(".status"))
    page.wait(lambda: not page.css("article.letter"))
    wait_for(lambda: d.ok("GET", "/v1/queues/payments.dlq/peek")["messages"] == [])
    acked = wait_for(lambda: _metric(d, 'runner_queue_acked_total{queue="payments-q"}') == 1.0)
    assert acked


def _metric(d: Daemon, series: str) -> float | None:
    for line in d.metrics().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def test_offsets_reset_shows_a_dry_run_before_applying(daemon, page_for) -> None:
    d = daemon
    for i in range(6):
        d.ok("POST", "/v1/topics/order-events/records",
             {"value": {"order_id": f"o{i}"}, "partition": i % 3}, status=202)
    ends = {p["partition"]: p["log_end_offset"]
            for p in d.ok("GET", "/v1/groups/reporting")["partitions"]}
    d.ok("POST", "/v1/groups/reporting/commit", {"offsets": [
        {"topic": "order-events", "partition": p, "offset": end} for p, end in ends.items()]})
    page = page_for(d)
    page.open("topics")
    assert page.misaligned_tables() == []
    page.screenshot("topics")
    page.open("topics/order-events", fresh=False)
    page.wait(lambda: "o0" in page.text("main"))
    assert page.misaligned_tables() == []
    page.screenshot("topic")
    page.open("groups/reporting", fresh=False)
    page.wait(lambda: [r[4] for r in page.rows("#group-table tbody tr")] == ["0", "0", "0"])
    assert page.misaligned_tables() == []
    page.one("#reset-to option[value='earliest']").click()
    assert page.one("#reset-apply").get_attribute("disabled") is not None
    page.one("#reset-dry").click()
    page.wait(lambda: "Dry run: nothing changed yet" in page.text("#reset-preview"))
    rows = page.rows("#reset-preview tbody tr")
    assert rows == [["order-events", str(p), str(end), "0", "0", str(end)]
                    for p, end in sorted(ends.items())]
    assert d.ok("GET", "/v1/groups/reporting")["lag"] == 0  # the dry run changed nothing
    assert page.misaligned_tables() == []
    page.screenshot("group")
    page.one("#reset-apply").click()
    page.confirm()
    page.wait(lambda: "Offsets reset." in page.text("#reset-preview"))
    assert d.ok("GET", "/v1/groups/reporting")["lag"] == sum(ends.values())
    page.wait(lambda: [r[4] for r in page.rows("#group-table tbody tr")]
              == [str(end) for _, end in sorted(ends.items())])


def test_token_gate_login_form_and_the_token_never_in_a_url(start_daemon, page_for) -> None:
    d = start(start_daemon, token="console-token-123")
    page = page_for(d)
    page.driver.get("about:blank")
    page.driver.get(d.url + "/ui/")
    page.one("#login:not([hidden])")
    assert page.one("#main").is_displayed() is False
    page.screenshot("login")
    page.one("#token").send_keys("not-it")
    page.one("#login-form button").click()
    page.wait(lambda: page.text("#login-error") == "wrong token")
    page.one("#token").send_keys("console-token-123")
    page.one("#login-form button").click()
    page.wait_route("overview")
    assert page.text("h1") == "Topology console-shop"
    urls = page.js("return performance.getEntriesByType('resource').map(e => e.name)")
    urls.append(page.driver.current_url)
    assert urls and not [u for u in urls if "console-token-123" in u]
    cookies = page.driver.get_cookies()  # (earlier tests' daemons left theirs on this host)
    mine = [(c["httpOnly"], c.get("sameSite")) for c in cookies
            if c["name"] == f"runner_console_{d.port}"]
    assert mine == [(True, "Strict")]
    assert "console-token-123" not in json.dumps(cookies)
    assert all(c["httpOnly"] for c in cookies)
    assert page.js("return document.cookie") == ""  # invisible to script


def test_bodies_and_headers_are_rendered_as_text(daemon, page_for) -> None:
    d = daemon
    evil = "<script>alert(1)</script><img src=x onerror=\"window.__xss=1\">"
    d.ok("POST", "/v1/queues/audit.dlq/messages",
         {"body": evil, "headers": {"x-evil": "<b onmouseover=alert(2)>hi</b>"},
          "routing_key": "<i>key</i>"}, status=202)
    (d.workdir / "gateway-down").write_text("")
    try:
        d.ok("POST", "/v1/exchanges/payments/messages",
             {"routing_key": "pay", "body": evil}, status=202)
        wait_for(lambda: d.ok("GET", "/v1/queues/payments.dlq/peek")["messages"])
    finally:
        (d.workdir / "gateway-down").unlink()
    page = page_for(d)
    page.open("queues/audit.dlq")
    page.wait(lambda: page.css("article.message"))
    assert json.loads(page.text("article.message pre.body")) == evil
    assert '"x-evil": "<b onmouseover=alert(2)>hi</b>"' in page.text("article.message pre.headers")
    assert "<i>key</i>" in page.text("article.message header")
    page.open("dlq/payments.dlq", fresh=False)
    page.wait(lambda: page.css("article.letter"))
    assert "<script>alert(1)</script>" in page.text("article.letter .error-line")
    assert page.js("return window.__xss") is None
    assert page.css("main script, main img, main [onerror], main [onmouseover]") == []
    page.screenshot("escaped")


def test_read_only_console_hides_every_change(start_daemon, page_for) -> None:
    d = start(start_daemon, args=["--console", "read-only"])
    (d.workdir / "gateway-down").write_text("")
    d.ok("POST", "/v1/exchanges/payments/messages",
         {"routing_key": "pay", "body": 1}, status=202)
    page = page_for(d)
    page.open("dlq/payments.dlq")
    page.wait(lambda: page.css("article.letter"))
    assert page.one("#mode").is_displayed()
    assert page.css("button.replay-one, #replay-all, #purge-all, input.pick") == []
    page.open("groups/reporting", fresh=False)
    assert page.css("#reset-dry") == []


def test_overview_shows_reloads_and_rates(daemon, page_for) -> None:
    d = daemon
    d.topology.write_text(d.topology.read_text().replace(
        "  shipping: {max_priority: 5}", "  shipping: {max_priority: 9}"))
    refused = d.post("/v1/admin/reload")
    assert refused.status == 409
    page = page_for(d)
    page.open("overview")
    page.wait(lambda: page.text(".card .pill") == "healthy")
    page.wait(lambda: page.css("tr.reload.refused"))
    reload_text = page.text("tr.reload.refused")
    assert "refused" in reload_text and "unsafe: changed queue shipping max_priority: 5 → 9" in (
        reload_text)
    # appends while the page is open show in the "in" chart (one-second samples)
    for i in range(20):
        d.ok("POST", "/v1/exchanges/orders/messages",
             {"routing_key": "orders.created", "body": {"order_id": f"r{i}"}}, status=202)
    page.wait(lambda: "(max 0/s)" not in page.text(".chart .chart-now"), timeout_s=6)
    assert page.misaligned_tables() == []
    page.screenshot("overview")


@pytest.mark.slow
def test_first_render_of_500_entities_is_under_a_second(start_daemon, page_for) -> None:
    d = start_daemon(big_topology(500), modules={"big_handlers": "def h(msg):\n    pass\n"})
    page = page_for(d)
    timings: dict[str, Any] = {}
    for name in ("flow", "overview", "queues"):
        runs = []
        for _ in range(3):
            page.open(name)
            page.wait(lambda: page.js("return document.body.dataset.firstRenderMs"))
            runs.append(int(page.js("return document.body.dataset.firstRenderMs")))
        timings[name] = {"runs_ms": runs, "median_ms": sorted(runs)[1]}
    page.open("flow")
    nodes = len(page.css("svg.flow g.node"))
    assert nodes == 500
    weight = sum(len(d.get(f"/ui/static/{f}").raw) for f in
                 ("app.js", "pages.js", "graph.js", "console.css")) + len(d.get("/ui/").raw)
    timings["page_weight_bytes"] = weight
    save_measure("first-render-500", timings, page.driver.name)
    page.screenshot("flow-500")
    for name, t in timings.items():
        if isinstance(t, dict):
            assert t["median_ms"] < 1000, (name, timings)
    assert weight < 150_000, weight


def big_topology(n: int) -> str:
    """A topology of `n` entities: exchanges, queues, topics, groups and consumers."""
    lines = ["version: 1", "name: big", "exchanges:"]
    k = n // 5
    lines += [f"  ex{i}: {{type: direct}}" for i in range(k)]
    lines.append("queues:")
    lines += [f"  q{i}: {{}}" for i in range(k)]
    lines.append("topics:")
    lines += [f"  t{i}: {{partitions: 2}}" for i in range(k)]
    lines.append("bindings:")
    lines += [f"  - {{exchange: ex{i}, queue: q{i}, routing_key: k{i}}}" for i in range(k)]
    lines.append("consumer_groups:")
    lines += [f"  g{i}: {{topic: t{i}}}" for i in range(k)]
    lines.append("dlq_policies:")
    lines.append("  p: {max_retries: 1, dead_letter_queue: q0}")
    lines.append("consumers:")
    lines += [f"  c{i}: {{queue: q{i}, handler: \"big_handlers:h\"}}" for i in range(n - 4 * k)]
    return "\n".join(lines) + "\n"



def test_a_dead_letter_topic_lists_depth_and_age_replays_and_purges(
    start_daemon, page_for
) -> None:
    from tests.e2e.test_e2e_topic_dlq import HANDLERS, TOPOLOGY

    d = start_daemon(TOPOLOGY, modules={"dlq_handlers": HANDLERS})
    (d.workdir / "fail").write_text("")
    d.ok("POST", "/v1/topics/t/records", {"records": [{"value": "r0"}, {"value": "r1"}]}, 202)
    wait_for(lambda: d.ok("GET", "/v1/topics/t.dlq/dead-letters")["depth"] == 2)
    page = page_for(d)
    page.open("dlq")
    row = "#dlq-table tr[data-name='t.dlq']"
    page.wait(lambda: page.text(f"{row} td:nth-child(2)") == "topic")
    assert page.text(f"{row} td:nth-child(3)") == "2"
    assert page.text(f"{row} td:nth-child(4)") not in ("", "–")
    page.screenshot("dead-letter-topic")
    page.one(f"{row} a").click()
    page.wait_route("dlq/t.dlq")
    page.wait(lambda: len(page.css("article.letter")) == 2)
    assert "topic t partition 0 offset 0 (group g)" in page.text("article.letter")
    assert "ValueError" in page.text("article.letter .error-line")
    assert len(page.css("input.pick")) == len(page.css("button.replay-one")) == 2
    (d.workdir / "fail").unlink()
    page.one("#replay-all").click()
    page.wait(lambda: "Replayed 2 dead letter(s)." in page.text(".status"))
    page.wait(lambda: not page.css("article.letter"))
    wait_for(lambda: sorted((d.workdir / "done.txt").read_text().split()) == ["r0", "r1"]
             if (d.workdir / "done.txt").exists() else False)
    # live: a new dead letter raises the depth on the list without a reload
    (d.workdir / "fail").write_text("")
    page.open("dlq", fresh=False)
    page.wait(lambda: page.text(f"{row} td:nth-child(3)") == "0")
    d.ok("POST", "/v1/topics/t/records", {"records": [{"value": "r2"}]}, 202)
    page.wait(lambda: page.text(f"{row} td:nth-child(3)") == "1")
    page.one(f"{row} a").click()
    page.wait(lambda: len(page.css("article.letter")) == 1)
    page.one("#purge-all").click()
    page.confirm()
    page.wait(lambda: "Purged 1 dead letter(s)." in page.text(".status"))
    assert d.ok("GET", "/v1/topics/t.dlq/dead-letters")["depth"] == 0
    assert d.ok("GET", "/v1/topics/t.dlq")["records"] == 3  # the log keeps them
    assert page.console_errors() == []


def test_a_dead_letter_topic_replays_and_purges_one_record_at_a_time(
    start_daemon, page_for
) -> None:
    from tests.e2e.test_e2e_topic_dlq import HANDLERS, TOPOLOGY

    d = start_daemon(TOPOLOGY, modules={"dlq_handlers": HANDLERS})
    (d.workdir / "fail").write_text("")
    d.ok("POST", "/v1/topics/t/records",
         {"records": [{"value": f"r{i}"} for i in range(4)]}, 202)
    wait_for(lambda: d.ok("GET", "/v1/topics/t.dlq/dead-letters")["depth"] == 4)
    letters = d.ok("GET", "/v1/topics/t.dlq/dead-letters")["records"]
    pending = [(r["partition"], r["offset"]) for r in letters]
    values = [r["value"] for r in letters]  # r0..r3, in the order the page shows them
    page = page_for(d)
    page.open("dlq/t.dlq")
    page.wait(lambda: len(page.css("article.letter")) == 4)
    names = [page.text(f"article.letter:nth-of-type({i}) header b") for i in range(1, 5)]
    assert names == [f"p{p}@{o}" for p, o in pending]
    (d.workdir / "fail").unlink()

    def letter(k: int) -> str:
        return "article.letter[data-id='{}:{}']".format(*pending[k])

    # Replay on the third letter: only it goes back
    _click(page, f"{letter(2)} button.replay-one")
    page.wait(lambda: "Replayed 1 dead letter(s)." in page.text(".status"))
    page.wait(lambda: len(page.css("article.letter")) == 3)
    wait_for(lambda: (d.workdir / "done.txt").exists()
             and (d.workdir / "done.txt").read_text().split() == [values[2]])
    assert d.ok("GET", "/v1/topics/t.dlq/dead-letters")["depth"] == 3
    page.js("window.scrollTo(0, 0)")
    page.screenshot("dead-letter-topic-record")

    # tick the first and the last, purge them (confirmed): marked handled, not replayed
    _click(page, f"{letter(0)} input.pick")
    _click(page, f"{letter(3)} input.pick")
    _click(page, "#purge-selected")
    page.confirm()
    page.wait(lambda: "Purged 2 dead letter(s)." in page.text(".status"))
    page.wait(lambda: len(page.css("article.letter")) == 1)
    assert page.text("article.letter header b") == "p{}@{}".format(*pending[1])

    # the rest: Replay all takes only what is still pending
    _click(page, "#replay-all")
    page.wait(lambda: "Replayed 1 dead letter(s)." in page.text(".status"))
    page.wait(lambda: not page.css("article.letter"))
    wait_for(lambda: sorted((d.workdir / "done.txt").read_text().split())
             == sorted([values[1], values[2]]))
    assert d.ok("GET", "/v1/topics/t.dlq/dead-letters")["depth"] == 0
    assert d.ok("POST", "/v1/topics/t.dlq/replay", {})["replayed"] == 0
    assert page.console_errors() == []


def _click(page: Page, selector: str) -> None:
    """Click what `selector` names (scrolled clear of the sticky header first), again
    if the live feed re-rendered it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(50):
        try:
            el = page.one(selector)
            page.js("arguments[0].scrollIntoView({block: 'center'})", el)
            el.click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"{selector} kept going stale")
