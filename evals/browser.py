"""A real headless Chromium driven over the DevTools protocol: test-only.

Debian's `chromium-headless-shell` (installed by scripts/browser.sh, from `setup.sh --test`) is started on a
free DevTools port with its own profile; `Page` opens one tab and drives it: navigate, evaluate JavaScript in
the page, wait for a condition, take a screenshot.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import httpx
import websocket

BINARIES = ("chromium-headless-shell", "chromium", "chromium-browser")


def find_browser() -> str | None:
    """The first headless-capable Chromium on PATH (or $SREGRAPH_CHROMIUM)."""
    explicit = os.environ.get("SREGRAPH_CHROMIUM")
    if explicit:
        return explicit
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


class Browser:
    """One headless Chromium process."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.profile = profile
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1280,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Debian's binary is a shell wrapper around the real browser and its helpers: a group of its own
            # lets `close` stop all of them, not only the wrapper.
            start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{binary} did not open its DevTools port")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])

    def page(self) -> Page:
        """The first tab."""
        tabs = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=10).json()
        tab = next(t for t in tabs if t["type"] == "page")
        return Page(tab["webSocketDebuggerUrl"])

    def close(self) -> None:
        """Stop the browser and every process it started."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Page:
    """One tab over its DevTools websocket."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.console: list[str] = []
        self.call("Runtime.enable")
        self.call("Page.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are kept as console lines)."""
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                # json.loads is untyped; a CDP result is an object.
                return cast(dict[str, Any], message.get("result", {}))
            if message.get("method") in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown"):
                self.console.append(json.dumps(message["params"])[:500])

    def goto(self, url: str) -> None:
        """Navigate and wait until the document has loaded."""
        self.call("Page.navigate", url=url)
        self.wait_for(
            f"document.readyState === 'complete' && location.href.startsWith({json.dumps(url.split('?')[0])})"
        )

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> float:
        """Poll until `expression` is truthy; returns when that happened (time.monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.eval(f"Boolean({expression})"):
                return time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true after {timeout} s: {expression}; console: {self.console[-5:]}")
            time.sleep(0.05)

    def screenshot(self, path: Path) -> None:
        """A PNG of the viewport."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        """Close the websocket."""
        self.ws.close()
