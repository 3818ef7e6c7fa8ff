"""Console fixtures: the real daemon (tests/e2e) and a headless browser, Chromium and Firefox.

Every browser test runs once in each (the `browser` fixture is parametrised):
Debian's `chromium` driven by Selenium through its `chromium-driver`, and
Debian's `firefox-esr` driven over WebDriver BiDi by `tests/console/firefox.py`
(no geckodriver: Debian has none, and nothing is downloaded). Without a browser
its tests skip with one line saying what to install; with `CI` set they fail
instead. Screenshots go to `artifacts/console/` (or `$RUNNER_ARTIFACTS/console/`),
Firefox's to its `firefox/` folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.e2e.conftest import REPO, Daemon, start_daemon, wait_for  # noqa: F401

ARTIFACTS = Path(os.environ.get("RUNNER_ARTIFACTS", REPO / "artifacts")) / "console"
BROWSERS = ("chromium", "firefox")


def _missing(browser: str, what: str, hint: str) -> NoReturn:
    message = f"{browser} browser tests need {what} ({hint})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session", params=BROWSERS)
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One headless browser of each kind for the whole run (each test opens its own pages)."""
    driver = _chromium() if request.param == "chromium" else _firefox()
    try:
        yield driver
    finally:
        driver.quit()


def _chromium() -> Any:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("chromium", "the selenium package", "pip install selenium")
    binary = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    if binary is None or driver_path is None:
        _missing("chromium", "chromium and chromedriver",
                 "apt-get install chromium chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    return driver


def _firefox() -> Any:
    try:
        import selenium  # noqa: F401  (its exceptions are the tests' exceptions)
        import websocket  # noqa: F401  (websocket-client)
    except ImportError:
        _missing("firefox", "the selenium and websocket-client packages",
                 "pip install selenium websocket-client")
    binary = _find("firefox-esr", "firefox")
    if binary is None:
        _missing("firefox", "firefox-esr", "apt-get install firefox-esr")
    from tests.console.firefox import FirefoxDriver

    return FirefoxDriver(binary)


class Page:
    """The browser pointed at one daemon's console."""

    def __init__(self, driver: Any, daemon: Daemon) -> None:
        self.driver = driver
        self.daemon = daemon

    def open(self, hash_: str = "overview", *, fresh: bool = True) -> None:
        url = f"{self.daemon.url}/ui/#/{hash_}"
        if fresh:
            self.driver.get("about:blank")
            self.driver.get(url)
        else:
            self.driver.execute_script("location.hash = arguments[0]", f"#/{hash_}")
        self.wait_route(hash_.split("?")[0])

    def wait_route(self, route: str, timeout_s: float = 10.0) -> None:
        """Until the page for `route` (e.g. `queues/shipping`) is rendered."""
        self.wait(lambda: self.js("return document.body.dataset.route") == route, timeout_s)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def one(self, selector: str, timeout_s: float = 10.0) -> Any:
        return self.wait(lambda: (self.css(selector) or [None])[0], timeout_s)

    def text(self, selector: str = "main") -> str:
        """The element's text; one that the live feed re-rendered between the lookup
        and the read (stale) is looked up again."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(50):
            try:
                return str(self.one(selector).text)
            except StaleElementReferenceException:
                time.sleep(0.05)
        raise AssertionError(f"{selector} kept going stale")

    def rows(self, selector: str) -> list[list[str]]:
        """The cells' words of every row matching `selector`, read in one script: the live
        feed redraws tables, so reading row by row could mix two renders (or go stale)."""
        texts = self.js("return Array.from(document.querySelectorAll(arguments[0]))"
                        ".map(r => r.innerText)", selector)
        return [str(t).split() for t in texts]

    def wait(self, check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except Exception as exc:  # a stale element while the page re-renders
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(0.05)
        raise AssertionError(f"browser condition not met within {timeout_s}s (last: {last!r})\n"
                             f"{self.console_errors()}")

    def console_errors(self) -> list[str]:
        """(Reading the browser log empties it.)"""
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def wheel(self, element: Any, delta_y: int) -> None:
        """A real wheel turn over `element`'s centre (negative: away from the user)."""
        if self.driver.name == "firefox":
            element.wheel(delta_y)
            return
        from selenium.webdriver import ActionChains
        from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

        ActionChains(self.driver).scroll_from_origin(
            ScrollOrigin.from_element(element), 0, delta_y).perform()

    def drag(self, element: Any, x: int, y: int, dx: int, dy: int) -> None:
        """A real mouse drag: press at (x, y) from `element`'s centre, move by (dx, dy)."""
        if self.driver.name == "firefox":
            element.drag(x, y, dx, dy)
            return
        from selenium.webdriver import ActionChains

        chain = ActionChains(self.driver).move_to_element_with_offset(element, x, y)
        chain.click_and_hold()
        for _ in range(4):
            chain.move_by_offset(dx // 4, dy // 4)
        chain.release().perform()

    def misaligned_tables(self) -> list[str]:
        """Every table in the page whose body rows do not sit in the header's columns
        (another cell count, a cell not starting where its column's header starts, or
        aligned otherwise than its header: numbers right, both)."""
        return list(self.js("""
            const bad = [];
            document.querySelectorAll('main table').forEach((t, ti) => {
              const name = t.id || `table ${ti}`;
              const heads = t.querySelectorAll(':scope > thead > tr > th');
              if (t.querySelector('tbody tbody')) bad.push(`${name}: a tbody inside a tbody`);
              t.querySelectorAll('tbody tr').forEach((tr, ri) => {
                if (tr.cells.length !== heads.length) {
                  bad.push(`${name} row ${ri}: ${tr.cells.length} cells, ${heads.length} headers`);
                  return;
                }
                Array.from(tr.cells).forEach((td, ci) => {
                  const a = td.getBoundingClientRect().left;
                  const b = heads[ci].getBoundingClientRect().left;
                  const at = `${name} row ${ri} cell ${ci}`;
                  if (Math.abs(a - b) > 1) bad.push(`${at}: x ${a}, not ${b}`);
                  const align = getComputedStyle(td).textAlign;
                  if (align !== getComputedStyle(heads[ci]).textAlign) {
                    bad.push(`${at}: aligned ${align}, its header not`);
                  }
                });
              });
            });
            return bad;"""))

    def confirm(self) -> None:
        self.one("#confirm[open]")
        self.one("#confirm-ok").click()

    def screenshot(self, name: str) -> Path:
        folder = ARTIFACTS / "firefox" if self.driver.name == "firefox" else ARTIFACTS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def page_for(browser: Any) -> Iterator[Callable[[Daemon], Page]]:
    made: list[Page] = []

    def make(daemon: Daemon) -> Page:
        browser.get("about:blank")
        browser.delete_all_cookies()
        browser.get_log("browser")  # drop what earlier tests' pages logged
        p = Page(browser, daemon)
        made.append(p)
        return p

    yield make
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and "favicon" not in e["message"] and " 401 " not in e["message"]]
    browser.get("about:blank")  # closes the event stream before the daemon stops
    assert made and not errors, errors


def save_measure(name: str, data: dict[str, Any], browser: str = "chrome") -> None:
    folder = ARTIFACTS / "firefox" if browser == "firefox" else ARTIFACTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")


class Session:
    """A console session over plain HTTP (cookie + CSRF token), for API tests."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.cookies: dict[str, str] = {}
        self.csrf: str | None = None

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.daemon.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.cookies:
            req.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw, hdrs = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, raw, hdrs = exc.code, exc.read(), exc.headers
        for value in hdrs.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name] = rest.split(";")[0]
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return status, parsed, dict(hdrs)

    def open(self) -> dict[str, Any]:
        status, body, _ = self.call("GET", "/ui/api/session")
        assert status == 200, body
        self.csrf = body["csrf"]
        return dict(body)

    def login(self, token: str) -> tuple[int, Any]:
        status, body, _ = self.call("POST", "/ui/api/login", {"token": token})
        if status == 200:
            self.csrf = body["csrf"]
        return status, body

    def get(self, path: str) -> tuple[int, Any]:
        status, body, _ = self.call("GET", "/ui/api/" + path)
        return status, body

    def post(self, path: str, body: Any, *, csrf: bool = True) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": self.csrf or ""} if csrf else {}
        status, answer, _ = self.call("POST", "/ui/api/" + path, body, headers)
        return status, answer
