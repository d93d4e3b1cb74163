"""A screenshot of a page of the Ray dashboard, taken in headless Chromium (test helper).

Chromium is driven through the DevTools protocol over a websocket (aiohttp's client, which
``ray[default]`` already brings): the dashboard's token cookie is set (Ray 2.60 turns token
auth on for local clusters; without the cookie the page shows a token prompt), the page is
opened at a fixed window size, and the screenshot is taken once the page's text holds every
string the caller waits for. :func:`find_chromium` is None where no Chromium is installed
(Debian: ``apt-get install chromium``; ``.ci/run`` installs it where it can).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["find_chromium", "ray_auth_token", "screenshot"]

TOKEN_COOKIE = "ray-authentication-token"  # ray._private.authentication.authentication_constants


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ray_auth_token() -> str | None:
    """The local cluster's auth token (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``
    names, or ``~/.ray/auth_token``), or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def screenshot(url: str, out: Path, *, wait_for: tuple[str, ...] = (), timeout_s: float = 60.0,
               size: tuple[int, int] = (1400, 900), token: str | None = None) -> str:
    """Open ``url`` in headless Chromium, wait until the page's text contains every string
    of ``wait_for`` (TimeoutError after ``timeout_s``, with the text it had), save a PNG
    screenshot to ``out`` and return the page's text."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="tce-chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            port = _devtools_port(proc, time.monotonic() + 30)
            return asyncio.run(_shoot(port, url, out, wait_for, timeout_s, size, token))
        finally:  # Chromium's own child processes (zygote, renderer, GPU) go with it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _devtools_port(proc: subprocess.Popen, deadline: float) -> int:
    """The port of "DevTools listening on ws://127.0.0.1:PORT/..." that Chromium prints."""
    assert proc.stderr is not None
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if m:
            return int(m.group(1))
    raise RuntimeError("Chromium did not start its DevTools endpoint:\n" + "".join(seen[-20:]))


async def _shoot(port: int, url: str, out: Path, wait_for: tuple[str, ...], timeout_s: float,
                 size: tuple[int, int], token: str | None) -> str:
    import aiohttp

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
        pages = [t for t in json.load(r) if t.get("type") == "page"]
    async with aiohttp.ClientSession() as http, http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
        ids = iter(range(1, 10**9))

        async def call(method: str, **params):  # noqa: ANN202 - one DevTools command, its result
            n = next(ids)
            await ws.send_json({"id": n, "method": method, "params": params})
            while True:
                msg = json.loads((await ws.receive(timeout=30)).data)
                if msg.get("id") == n:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})

        await call("Network.enable")
        if token:
            await call("Network.setCookie", name=TOKEN_COOKIE, value=token, url=url.split("#")[0])
        await call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)
        await call("Page.enable")
        await call("Page.navigate", url=url)
        deadline, text = time.monotonic() + timeout_s, ""
        while True:
            res = await call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''", returnByValue=True)
            text = res.get("result", {}).get("value") or ""
            if all(s in text for s in wait_for):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: the page never showed {wait_for}; its text:\n{text[:2000]}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # let the last rows render
        shot = await call("Page.captureScreenshot", format="png")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    return text
