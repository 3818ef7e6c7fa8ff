"""Firefox without geckodriver: a small WebDriver BiDi client for the console's browser tests.

Debian ships `firefox-esr` but no geckodriver, and nothing may be downloaded at test
time. Firefox speaks WebDriver BiDi itself: started with `--remote-debugging-port 0`
it prints `WebDriver BiDi listening on ws://127.0.0.1:PORT` on stderr and takes
sessions on `ws://127.0.0.1:PORT/session`. `FirefoxDriver` starts it headless on a
fresh temporary profile, opens a session over that WebSocket (the `websocket-client`
package, which Selenium already depends on) and offers the part of Selenium's
WebDriver API the tests use (`get`, `execute_script`, `find_elements`, element
`text`/`get_attribute`/`click`/`send_keys`/`is_displayed`, `get_log("browser")`,
cookies, `save_screenshot`, `quit`), so one `Page` drives Chromium and Firefox alike.

`get_log("browser")` gives what Chromium's log would call SEVERE: console errors,
uncaught exceptions (the BiDi `log.entryAdded` events of level `error`) and
responses with a status of 400 or more (`network.responseCompleted`), worded like
Chromium's "Failed to load resource" lines.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# Prefs for a quiet test profile: no first-run pages, updates, telemetry or
# background fetches (the remote agent adds its own recommended prefs on top).
PREFS = {
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.aboutwelcome.enabled": False,
    "app.update.auto": False,
    "app.update.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "extensions.update.enabled": False,
    "browser.newtabpage.enabled": False,
    "dom.disable_open_during_load": False,
}

LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")


class BidiError(Exception):
    """A BiDi command answered with an error."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error


def _stale(message: str) -> Exception:
    from selenium.common.exceptions import StaleElementReferenceException

    return StaleElementReferenceException(message)


class FirefoxElement:
    """A DOM node held by its BiDi shared id (stale once it leaves the document)."""

    def __init__(self, driver: FirefoxDriver, shared_id: str) -> None:
        self.driver = driver
        self.shared_id = shared_id

    def _call(self, body: str, *args: Any) -> Any:
        """Run `body` as a function of (el, ...args); a detached node is stale."""
        return self.driver.call(
            "function(el, ...args) { if (!el.isConnected) throw new Error('stale element');"
            f" {body} }}", self, *args)

    @property
    def text(self) -> str:
        """The rendered text (innerText; SVG elements have none, so their textContent)."""
        return str(self._call("return 'innerText' in el ? el.innerText : el.textContent;"))

    @property
    def tag_name(self) -> str:
        return str(self._call("return el.localName;"))

    def get_attribute(self, name: str) -> str | None:
        value = self._call("return el.getAttribute(args[0]);", name)
        return None if value is None else str(value)

    def is_displayed(self) -> bool:
        return bool(self._call(
            "return el.checkVisibility({visibilityProperty: true})"
            " && el.getClientRects().length > 0;"))

    def click(self) -> None:
        if self.tag_name == "option":  # a closed <select>'s options take no pointer
            self._call("el.selected = true; const s = el.closest('select');"
                       " s.dispatchEvent(new Event('input', {bubbles: true}));"
                       " s.dispatchEvent(new Event('change', {bubbles: true}));")
            return
        self._call("el.scrollIntoView({block: 'center', inline: 'center'});")
        try:
            self.driver.perform([{
                "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
                "actions": [
                    {"type": "pointerMove", "x": 0, "y": 0,
                     "origin": {"type": "element", "element": {"sharedId": self.shared_id}}},
                    {"type": "pointerDown", "button": 0},
                    {"type": "pointerUp", "button": 0},
                ]}])
        except BidiError as err:
            # a re-render can detach the node between the lookup and the move: Firefox
            # says "not displayed", chromium (selenium) says stale; callers retry on stale
            if err.error == "move target out of bounds" and not self.driver.call(
                    "function(el) { return el.isConnected; }", self):
                raise _stale(str(err)) from err
            raise

    def _origin(self) -> dict[str, Any]:
        return {"type": "element", "element": {"sharedId": self.shared_id}}

    def wheel(self, delta_y: int) -> None:
        """One wheel turn over the element's centre (negative: away from the user)."""
        self.driver.perform([{"type": "wheel", "id": "wheel", "actions": [
            {"type": "scroll", "x": 0, "y": 0, "deltaX": 0, "deltaY": delta_y,
             "origin": self._origin()}]}])

    def drag(self, x: int, y: int, dx: int, dy: int, steps: int = 4) -> None:
        """Press at (x, y) from the element's centre, move by (dx, dy) in steps, release."""
        moves: list[dict[str, Any]] = []
        done_x = done_y = 0
        for i in range(1, steps + 1):
            to_x, to_y = dx * i // steps, dy * i // steps
            moves.append({"type": "pointerMove", "x": to_x - done_x, "y": to_y - done_y,
                          "duration": 20, "origin": "pointer"})
            done_x, done_y = to_x, to_y
        self.driver.perform([{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [{"type": "pointerMove", "x": x, "y": y, "origin": self._origin()},
                        {"type": "pointerDown", "button": 0}, *moves,
                        {"type": "pointerUp", "button": 0}]}])

    def send_keys(self, text: str) -> None:
        self._call("el.focus();")
        keys: list[dict[str, Any]] = []
        for ch in text:
            keys += [{"type": "keyDown", "value": ch}, {"type": "keyUp", "value": ch}]
        self.driver.perform([{"type": "key", "id": "keyboard", "actions": keys}])

    def __repr__(self) -> str:
        return f"<FirefoxElement {self.shared_id}>"


class FirefoxDriver:
    """Headless Firefox over WebDriver BiDi, shaped like the Selenium driver the tests use."""

    name = "firefox"

    def __init__(self, binary: str, *, width: int = 1280, height: int = 800,
                 start_timeout_s: float = 60.0) -> None:
        import websocket  # websocket-client, a dependency of selenium

        self.profile = Path(tempfile.mkdtemp(prefix="runner-firefox-"))
        (self.profile / "user.js").write_text("".join(
            f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items()))
        env = dict(os.environ, MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1")
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-remote", "--new-instance",
             "--remote-debugging-port", "0", "--profile", str(self.profile), "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, text=True)
        self._stderr: list[str] = []
        found = threading.Event()
        url: list[str] = []

        def read_stderr() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self._stderr.append(line.rstrip())
                m = LISTENING.search(line)
                if m and not url:
                    url.append(m.group(1))
                    found.set()
            found.set()

        self._reader = threading.Thread(target=read_stderr, daemon=True)
        self._reader.start()
        if not found.wait(start_timeout_s) or not url:
            self.quit()
            raise RuntimeError("firefox did not open its WebDriver BiDi port:\n"
                               + "\n".join(self._stderr[-20:]))
        # Firefox refuses WebSocket handshakes that carry an Origin header.
        self.ws = websocket.create_connection(url[0].rstrip("/") + "/session",
                                              suppress_origin=True, timeout=60)
        self._next_id = 0
        self._log: list[dict[str, Any]] = []
        self.timeout_s = 30.0
        caps = self.command("session.new", {"capabilities": {"alwaysMatch": {
            "acceptInsecureCerts": True, "unhandledPromptBehavior": {"default": "ignore"}}}})
        self.capabilities: dict[str, Any] = caps["capabilities"]
        self.command("session.subscribe",
                     {"events": ["log.entryAdded", "network.responseCompleted"]})
        contexts = self.command("browsingContext.getTree", {"maxDepth": 0})["contexts"]
        self.context: str = contexts[0]["context"]
        self.command("browsingContext.setViewport", {
            "context": self.context, "viewport": {"width": width, "height": height}})

    # -- the protocol ---------------------------------------------------------

    def command(self, method: str, params: dict[str, Any]) -> Any:
        self._next_id += 1
        mine = self._next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("type") == "event":
                self._event(message["method"], message["params"])
                continue
            if message.get("id") != mine:
                continue
            if message.get("type") == "error":
                if message["error"] == "no such node":
                    raise _stale(message.get("message", ""))
                raise BidiError(message["error"], message.get("message", ""))
            return message["result"]

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "log.entryAdded" and params.get("level") == "error":
            where = (params.get("source") or {}).get("context", "")
            text = params.get("text") or ""
            if params.get("type") == "javascript" and params.get("stackTrace"):
                frames = params["stackTrace"].get("callFrames") or []
                if frames:
                    f = frames[0]
                    text += f" ({f.get('url')}:{f.get('lineNumber')})"
            self._log.append({"level": "SEVERE", "message": text, "source": where})
        elif method == "network.responseCompleted":
            response = params.get("response") or {}
            status = int(response.get("status") or 0)
            if status >= 400:
                self._log.append({"level": "SEVERE", "message": (
                    f"{response.get('url')} - Failed to load resource: the server responded"
                    f" with a status of {status} ({response.get('statusText', '')})")})

    def perform(self, actions: list[dict[str, Any]]) -> None:
        self.command("input.performActions", {"context": self.context, "actions": actions})
        self.command("input.releaseActions", {"context": self.context})

    def call(self, function: str, *args: Any) -> Any:
        result = self.command("script.callFunction", {
            "functionDeclaration": function,
            "arguments": [self._local(a) for a in args],
            "target": {"context": self.context},
            "awaitPromise": True,
            "serializationOptions": {"maxDomDepth": 0, "maxObjectDepth": 20},
        })
        if result["type"] == "exception":
            details = result["exceptionDetails"]
            text = details.get("text", "")
            if "stale element" in text:
                raise _stale(text)
            from selenium.common.exceptions import JavascriptException

            raise JavascriptException(text)
        return self._remote(result["result"])

    def _local(self, value: Any) -> dict[str, Any]:
        if isinstance(value, FirefoxElement):
            return {"sharedId": value.shared_id}
        if value is None:
            return {"type": "null"}
        if isinstance(value, bool):
            return {"type": "boolean", "value": value}
        if isinstance(value, int | float):
            return {"type": "number", "value": value}
        if isinstance(value, str):
            return {"type": "string", "value": value}
        if isinstance(value, list | tuple):
            return {"type": "array", "value": [self._local(v) for v in value]}
        if isinstance(value, dict):
            return {"type": "object",
                    "value": [[str(k), self._local(v)] for k, v in value.items()]}
        raise TypeError(f"cannot pass {type(value).__name__} to the browser")

    def _remote(self, value: dict[str, Any]) -> Any:
        kind = value.get("type")
        if kind in ("undefined", "null"):
            return None
        if kind in ("string", "boolean"):
            return value["value"]
        if kind == "number":
            v = value["value"]
            specials = {"NaN": math.nan, "-0": -0.0, "Infinity": math.inf,
                        "-Infinity": -math.inf}
            return specials[v] if isinstance(v, str) else v
        if kind == "bigint":
            return int(value["value"])
        if kind == "node":
            return FirefoxElement(self, value["sharedId"])
        if kind in ("array", "set", "nodelist", "htmlcollection"):
            return [self._remote(v) for v in value.get("value", [])]
        if kind in ("object", "map"):
            out: dict[str, Any] = {}
            for key, v in value.get("value", []):
                k = key if isinstance(key, str) else self._remote(key)
                out[str(k)] = self._remote(v)
            return out
        if kind in ("date", "regexp"):
            return value.get("value")
        return value  # window, function, promise, ...: as BiDi describes it

    # -- what the tests call (Selenium's names) --------------------------------

    def set_page_load_timeout(self, seconds: float) -> None:
        self.timeout_s = seconds

    def get(self, url: str) -> None:
        self.command("browsingContext.navigate",
                     {"context": self.context, "url": url, "wait": "complete"})

    @property
    def current_url(self) -> str:
        return str(self.call("function() { return location.href; }"))

    def execute_script(self, script: str, *args: Any) -> Any:
        """`script` is a function body, as in Selenium (`arguments[0]`, `return ...`)."""
        return self.call(f"function() {{ {script}\n}}", *args)

    def find_elements(self, by: str, value: str) -> list[FirefoxElement]:
        if by != "css selector":
            raise ValueError(f"only CSS selectors, not {by}")
        found = self.call("function(s) { return Array.from(document.querySelectorAll(s)); }",
                          value)
        return list(found or [])

    def get_log(self, kind: str) -> list[dict[str, Any]]:
        """Everything logged since the last call (reading empties it, as in Chromium)."""
        if kind != "browser":
            raise ValueError(kind)
        self.command("session.status", {})  # a round trip: take what arrived meanwhile
        entries, self._log = self._log, []
        return entries

    def _host(self) -> str | None:
        return urlparse(self.current_url).hostname

    def get_cookies(self) -> list[dict[str, Any]]:
        host = self._host()
        params: dict[str, Any] = {"filter": {"domain": host}} if host else {}
        cookies = self.command("storage.getCookies", params)["cookies"]
        return [{
            "name": c["name"], "value": c["value"].get("value", ""), "domain": c["domain"],
            "path": c["path"], "httpOnly": c["httpOnly"], "secure": c["secure"],
            "sameSite": str(c["sameSite"]).capitalize(),
        } for c in cookies]

    def delete_all_cookies(self) -> None:
        self.command("storage.deleteCookies", {})

    def save_screenshot(self, path: str) -> bool:
        data = self.command("browsingContext.captureScreenshot", {"context": self.context})
        Path(path).write_bytes(base64.b64decode(data["data"]))
        return True

    def quit(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            with contextlib.suppress(Exception):
                self.command("session.end", {})
            with contextlib.suppress(Exception):
                ws.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(10)
        if self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

