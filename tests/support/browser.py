"""A headless Chromium driven through the Chrome DevTools Protocol over a pipe: no extra package.

The browser reads commands on its fd 3 and writes replies and events on its fd 4, one JSON message per NUL-terminated
chunk (``--remote-debugging-pipe``). :func:`open_page` starts it, attaches to its page and yields a :class:`Page`
that navigates, evaluates, clicks with real mouse events, records console errors and network requests, and writes a
full-page screenshot. Every wait has a timeout; the browser is killed on exit.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMEOUT_S = 30.0
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
    "--no-default-browser-check", "--disable-extensions", "--disable-background-networking", "--disable-sync",
    "--disable-component-update", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
)  # fmt: skip


def find_browser() -> str | None:
    """``MEMAUDIT_CHROMIUM``, else the first Chromium or Chrome on PATH; None when there is none."""
    configured = os.environ.get("MEMAUDIT_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else shutil.which(configured)
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class BrowserError(AssertionError):
    """The browser failed, answered with an error, or did not answer in time."""


class _Connection:
    """Commands out on one pipe, replies and events in on the other (read by a thread)."""

    def __init__(self, to_browser: int, from_browser: int):
        self._out, self._in = os.fdopen(to_browser, "wb"), os.fdopen(from_browser, "rb")
        self._replies: dict[int, queue.Queue] = {}
        self.events: queue.Queue = queue.Queue()
        self._next = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := self._in.read1(65536):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message and message["id"] in self._replies:
                    self._replies[message["id"]].put(message)
                else:
                    self.events.put(message)
        self.events.put({"method": "closed"})

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout=TIMEOUT_S) -> dict:
        with self._lock:
            self._next += 1
            ident, box = self._next, queue.Queue()
            self._replies[ident] = box
            message = {"id": ident, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            self._out.write(json.dumps(message).encode() + b"\0")
            self._out.flush()
        try:
            reply = box.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"the browser did not answer {method} within {timeout:.0f} s") from None
        finally:
            self._replies.pop(ident, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})


@dataclass
class Page:
    """One tab: what it logged and requested, and ways to drive it."""

    connection: _Connection
    session: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    _seen: list[dict] = field(default_factory=list)

    def send(self, method: str, params: dict | None = None, timeout: float = TIMEOUT_S) -> dict:
        return self.connection.send(method, params, self.session, timeout)

    def _record(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.console_errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.console_errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.console_errors.append(params["entry"]["text"])
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        self._seen.append(event)

    def pump(self, until: str | None = None, timeout: float = TIMEOUT_S) -> None:
        """Record the events that arrived; with ``until``, wait for that event (failing after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            wait = max(0.0, deadline - time.monotonic()) if until else 0.0
            try:
                event = self.connection.events.get(timeout=wait) if until else self.connection.events.get_nowait()
            except queue.Empty:
                if until:
                    raise BrowserError(f"no {until} within {timeout:.0f} s") from None
                return
            if event.get("method") == "closed":
                raise BrowserError("the browser closed its pipe")
            self._record(event)
            if until and event.get("method") == until:
                return

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.pump(until="Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"JavaScript failed: {result['exceptionDetails'].get('text')} in {expression[:80]}")
        self.pump()
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real left click (mouse pressed and released) at the centre of the first element matching ``selector``."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if box is None:
            raise BrowserError(f"nothing matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1})  # fmt: skip
        self.pump()

    def type_into(self, selector: str, text: str) -> None:
        """Focus ``selector`` and type ``text`` as keyboard input."""
        self.click(selector)
        self.send("Input.insertText", {"text": text})
        self.pump()

    def full_page_screenshot(self, path: Path) -> Path:
        """The whole page (not only the viewport) as a PNG written to ``path``."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def _spawn(binary: str, profile: str, width: int, height: int) -> tuple[subprocess.Popen, _Connection]:
    to_browser_read, to_browser_write = os.pipe()
    from_browser_read, from_browser_write = os.pipe()

    def on_fds_3_and_4() -> None:  # in the child, before exec
        os.dup2(to_browser_read, 3)
        os.dup2(from_browser_write, 4)

    command = [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, preexec_fn=on_fds_3_and_4, pass_fds=(3, 4),
                               start_new_session=True)  # fmt: skip
    os.close(to_browser_read)
    os.close(from_browser_write)
    return process, _Connection(to_browser_write, from_browser_read)


@contextlib.contextmanager
def open_page(binary: str, width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A fresh headless browser with one attached page (Runtime, Log, Page and Network events on)."""
    with tempfile.TemporaryDirectory(prefix="memaudit-chromium-") as profile:
        process, connection = _spawn(binary, profile, width, height)
        try:
            targets = connection.send("Target.getTargets")["targetInfos"]
            page_id = next(t["targetId"] for t in targets if t["type"] == "page")
            session = connection.send("Target.attachToTarget", {"targetId": page_id, "flatten": True})["sessionId"]
            page = Page(connection, session)
            for domain in ("Runtime", "Log", "Page", "Network"):
                page.send(f"{domain}.enable")
            yield page
        finally:
            with contextlib.suppress(OSError, BrowserError):
                connection.send("Browser.close", timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait(timeout=10)


@dataclass(frozen=True)
class PageCheck:
    """What a rendered page showed: console errors, each image's decoded size, the URLs it requested."""

    console_errors: list[str]
    images: list[tuple[int, int]]
    requests: list[str]
    screenshot: Path


def check_page(page: Page, path: Path, screenshot: Path) -> PageCheck:
    """Load the file ``path``, wait until its images are decoded, and write a full-page screenshot."""
    page.navigate(path.resolve().as_uri())
    page.evaluate("Promise.all([...document.images].map((i) => i.decode().catch(() => null)))")
    images = page.evaluate("[...document.images].map((i) => [i.complete ? i.naturalWidth : 0, i.naturalHeight])")
    page.full_page_screenshot(screenshot)
    return PageCheck(list(page.console_errors), [tuple(size) for size in images], list(page.requests), screenshot)
