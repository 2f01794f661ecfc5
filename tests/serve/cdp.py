"""A small Chrome DevTools protocol client: headless Chromium driven over one websocket.

Why not playwright: it drives a system Chromium too (``executable_path``), but brings a
~45 MB Node.js driver and pins to browser versions it was built against; the protocol itself
is three methods here (navigate, evaluate, dispatch input), and websocket-client is already a
test dependency. Every console message, uncaught exception, log entry and HTTP response of
the page is recorded, so a test can assert "no console errors" and list the routes the page
called with their statuses.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket  # websocket-client

__all__ = ["CHROMIUM_FLAGS", "Browser", "CdpError", "find_chromium"]

#: Launch flags: headless, no sandbox (containers), nothing fetched from the network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-extensions",
                  "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
                  "--window-size=1600,1000")


class CdpError(RuntimeError):
    """A protocol call failed, or the browser went away."""


def find_chromium() -> str | None:
    """The system Chromium (Debian's ``chromium``), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol.

    Args:
        executable: The browser binary.
        profile: An empty folder for the browser profile (and its DevToolsActivePort file).

    Attributes:
        console: ``(level, text)`` of every console call, uncaught exception and log entry.
        responses: ``(status, method, url)`` of every HTTP response the page received.
        failures: ``(url, error)`` of requests that got no response at all.
    """

    def __init__(self, executable: str, profile: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(profile / "chromium.log", "wb"),  # noqa: SIM115
            start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > end:
                self.close()
                raise CdpError("chromium did not start:\n"
                               + (profile / "chromium.log").read_text()[-2000:])
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages: list[dict[str, Any]] = []
        while not pages and time.monotonic() < end:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            time.sleep(0.1)
        if not pages:
            self.close()
            raise CdpError("chromium opened no page")
        self._ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30,
                                               suppress_origin=True)
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._results: dict[int, dict[str, Any]] = {}
        self._closed = False
        self.console: list[tuple[str, str]] = []
        self.responses: list[tuple[int, str, str]] = []
        self.failures: list[tuple[str, str]] = []
        self._requests: dict[str, tuple[str, str]] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")

    # ---------------------------------------------------------------- protocol
    def _read(self) -> None:
        while True:
            try:
                raw = self._ws.recv()
            except Exception:  # noqa: BLE001 - closed: wake every waiter
                with self._lock:
                    self._closed = True
                    self._lock.notify_all()
                return
            if not raw:
                continue
            message = json.loads(raw)
            if "id" in message:
                with self._lock:
                    self._results[message["id"]] = message
                    self._lock.notify_all()
            else:
                self._event(message.get("method", ""), message.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in
                            params.get("args", []))
            if params.get("type") == "error":
                frames = (params.get("stackTrace") or {}).get("callFrames", [])[:6]
                text += "".join(f"\n    at {f.get('functionName') or '?'} "
                                f"({f.get('url', '').rsplit('/', 1)[-1]}:{f.get('lineNumber')})"
                                for f in frames)
            self.console.append((params.get("type", "log"), text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.console.append(("exception", text))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append((f"log-{entry.get('level')}",
                                 f"{entry.get('text', '')} {entry.get('url', '')}".strip()))
        elif method == "Network.requestWillBeSent":
            request = params.get("request", {})
            self._requests[params.get("requestId", "")] = (request.get("method", ""),
                                                            request.get("url", ""))
        elif method == "Network.responseReceived":
            response = params.get("response", {})
            method_name, _ = self._requests.get(params.get("requestId", ""), ("GET", ""))
            self.responses.append((int(response.get("status", 0)), method_name,
                                   response.get("url", "")))
        elif method == "Network.loadingFailed":
            _, url = self._requests.get(params.get("requestId", ""), ("", ""))
            if not params.get("canceled"):
                self.failures.append((url, params.get("errorText", "")))

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """Send one protocol command and return its result.

        Raises:
            CdpError: The command failed or timed out, or the browser closed.
        """
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        end = time.monotonic() + timeout
        with self._lock:
            while call_id not in self._results:
                left = end - time.monotonic()
                if self._closed or left <= 0:
                    raise CdpError(f"{method}: {'browser closed' if self._closed else 'timeout'}")
                self._lock.wait(left)
            message = self._results.pop(call_id)
        if "error" in message:
            raise CdpError(f"{method}: {message['error']}")
        return message.get("result", {})

    # -------------------------------------------------------------------- page
    def navigate(self, url: str) -> None:
        """Open ``url`` in the page."""
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        """The value of a JavaScript expression (promises are awaited).

        Raises:
            CdpError: The expression threw.
        """
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression,
                           awaitPromise=True, returnByValue=True, userGesture=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError("evaluate: " + (details.get("exception", {}).get("description")
                                           or details.get("text", "")))
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value.

        Raises:
            CdpError: Still falsy after ``timeout`` seconds.
        """
        end = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < end:
            with contextlib.suppress(CdpError):
                value = self.evaluate(expression)
                if value:
                    return value
            time.sleep(0.2)
        raise CdpError(f"waited {timeout:.0f} s for {what or expression}; last value {value!r}")

    def click(self, x: float, y: float) -> None:
        """A real mouse click at page coordinates (the pointer moves there, then presses
        and releases)."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        time.sleep(0.1)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      buttons=1 if kind == "mousePressed" else 0, clickCount=1)

    def screenshot(self, path: Path) -> None:
        """Save a PNG of the page."""
        import base64

        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot")["data"]))

    def close(self) -> None:
        """Close the connection and end the browser (its whole process group)."""
        with contextlib.suppress(Exception):
            self._ws.close()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
