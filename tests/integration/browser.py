"""A tiny W3C WebDriver client for Debian's headless Chromium, driven through ChromeDriver's HTTP API."""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW_SIZE = (1280, 800)
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-default-apps", "--disable-extensions", "--hide-scrollbars",
    f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}",
]
STARTUP_TIMEOUT = 15.0
COMMAND_TIMEOUT = 60.0


class WebDriverError(RuntimeError):
    """ChromeDriver answered a command with an error."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Browser:
    """One WebDriver session: navigate, run JavaScript, take screenshots."""

    def __init__(self, endpoint: str, session_id: str) -> None:
        self.base = f"{endpoint}/session/{session_id}"

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        response = requests.request(method, self.base + path, json=payload, timeout=COMMAND_TIMEOUT)
        body = response.json()
        if response.status_code != 200:
            value = body.get("value", {})
            raise WebDriverError(f"{method} {path}: {value.get('error')}: {value.get('message')}")
        return body.get("value")

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """Run a function body in the page (``return`` gives the result back)."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def set_viewport(self, width: int, height: int) -> None:
        """Make the page's viewport exactly width x height CSS pixels (ChromeDriver's CDP bridge)."""
        params = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self._call("POST", "/goog/cdp/execute", {"cmd": "Emulation.setDeviceMetricsOverride", "params": params})

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))


@contextlib.contextmanager
def chromedriver() -> Iterator[str]:
    """Run ChromeDriver on a free loopback port; yield its endpoint URL."""
    port = _free_port()
    process = subprocess.Popen([CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{endpoint}/status", timeout=2).json()["value"]["ready"]:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromedriver did not get ready on port {port} (exit {process.poll()})")
            time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def browser_session(endpoint: str) -> Iterator[Browser]:
    """A headless Chromium with a throwaway profile, closed afterwards."""
    profile = tempfile.mkdtemp(prefix="handover-chromium-")
    capabilities = {
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": CHROMIUM, "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]},
    }
    try:
        response = requests.post(f"{endpoint}/session", json={"capabilities": {"alwaysMatch": capabilities}},
                                 timeout=COMMAND_TIMEOUT)
        value = response.json()["value"]
        if response.status_code != 200:
            raise WebDriverError(f"new session: {value.get('error')}: {value.get('message')}")
        session_id = value["sessionId"]
        try:
            browser = Browser(endpoint, session_id)
            browser.set_viewport(*WINDOW_SIZE)
            yield browser
        finally:
            with contextlib.suppress(requests.RequestException):
                requests.delete(f"{endpoint}/session/{session_id}", timeout=COMMAND_TIMEOUT)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def have_browser() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
