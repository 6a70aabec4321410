"""A headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe).

Only the standard library and Debian's `chromium` package (scripts/install_browser.sh): no
driver binary, no Python package, no port. Chromium reads commands from its fd 3 and writes
replies and events to its fd 4, one JSON message per NUL-terminated chunk. Every wait has a
deadline, so a hung browser fails the test instead of hanging it.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional


def find_chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class HeadlessChromium:
    """One browser with one page. Use as a context manager; ``timeout`` bounds each wait."""

    def __init__(self, binary: str, timeout: float = 30.0, window_size=(1280, 900), profile: Optional[str] = None):
        """``profile``: a user-data folder to keep (default: a temporary one, removed on close)."""
        self.timeout = timeout
        self.keep_profile = profile is not None
        self.profile = profile or tempfile.mkdtemp(prefix="chromium-profile-")
        os.makedirs(self.profile, exist_ok=True)
        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-sync", "--disable-component-update", "--mute-audio", "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}", f"--window-size={window_size[0]},{window_size[1]}", "about:blank",
        ]
        # bash puts the pipe ends on fds 3 and 4 (no Python code runs in the forked child; dash,
        # Debian's /bin/sh, cannot redirect from fds above 9).
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', binary, *args],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: List[Dict[str, Any]] = []
        self.errors: List[str] = []  # uncaught JavaScript exceptions and console errors, all along
        self.requests: List[str] = []  # URLs the page asked for, all along
        self.session: Optional[str] = None
        try:
            self._attach_page()
        except BaseException:
            self.close()
            raise

    # -- the protocol --------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> Dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no reply from chromium within {self.timeout} s{self._log_tail()}")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise BrowserError(f"chromium closed the pipe (exit {self.proc.poll()}){self._log_tail()}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: Optional[Dict] = None, browser_level: bool = False) -> Dict[str, Any]:
        """Send a command (to the page unless ``browser_level``) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not browser_level:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._record(reply)

    def wait_event(self, method: str, predicate: Callable[[Dict], bool] = lambda params: True) -> Dict:
        """The first event ``method`` (received before or after this call) whose params match;
        it and the events before it are consumed."""
        deadline = time.monotonic() + self.timeout
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method and predicate(event.get("params", {})):
                    del self.events[: i + 1]
                    return event["params"]
            self._record(self._read_message(deadline))

    def _record(self, event: Dict[str, Any]) -> None:
        params = event.get("params", {})
        if event["method"] == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params["exceptionDetails"])[:2000])
        elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(json.dumps(params.get("args"))[:2000])
        elif event["method"] == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        self.events.append(event)

    def _attach_page(self) -> None:
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")

    # -- what a test does ----------------------------------------------------------------------
    # Navigation is awaited by asking the page, not by load events: an event of an earlier
    # document (about:blank finishing late, a download) must not pass for the new one.
    def goto(self, url: str) -> None:
        self._mark_document()
        self.send("Page.navigate", {"url": url})
        self._wait_new_document()

    def reload(self) -> None:
        self._mark_document()
        self.send("Page.reload", {"ignoreCache": True})
        self._wait_new_document()

    def _mark_document(self) -> None:
        self.evaluate("window.__headless_old_document = true")

    def _wait_new_document(self) -> None:
        self.wait_for("!window.__headless_old_document && document.readyState === 'complete'")

    def wait_for(self, expression: str, interval: float = 0.05) -> Any:
        """Evaluate ``expression`` until it is truthy (a page being replaced counts as not yet)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError:  # no execution context while the document is replaced
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"still false after {self.timeout} s: {expression}{self._log_tail()}")
            time.sleep(interval)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (a JS exception is raised)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed + released) at the centre of the element ``selector``."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise BrowserError(f"no element matches {selector}")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1})

    def press(self, key: str, code: str, key_code: int) -> None:
        """A key press as a user types it (``key`` "ArrowLeft", ``code`` "ArrowLeft", 37)."""
        text = key if len(key) == 1 else ""
        self.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": key, "code": code, "text": text,
                                             "windowsVirtualKeyCode": key_code})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code,
                                             "windowsVirtualKeyCode": key_code})

    def allow_downloads(self, folder: str) -> None:
        self.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": folder,
                                                  "eventsEnabled": True}, browser_level=True)

    def wait_download(self) -> str:
        """The suggested file name of the next download, once it has completed."""
        begin = self.wait_event("Browser.downloadWillBegin")
        self.wait_event("Browser.downloadProgress",
                        lambda p: p["guid"] == begin["guid"] and p["state"] in ("completed", "canceled"))
        return begin["suggestedFilename"]

    def screenshot(self, path: str) -> None:
        import base64

        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def _log_tail(self) -> str:
        self.log.flush()
        with open(self.log.name, "rb") as f:
            tail = f.read()[-2000:].decode("utf-8", "replace").strip()
        return f"\nchromium log:\n{tail}" if tail else ""

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", browser_level=True)
                except (BrowserError, OSError):
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.log.close()
            if not self.keep_profile:
                shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "HeadlessChromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
