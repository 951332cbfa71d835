"""A minimal Chrome DevTools Protocol client over `--remote-debugging-pipe` (no websocket, no
extra package): enough to open pages in headless Chromium, wait for their `load` event,
evaluate JavaScript and collect errors and failed requests.

Chromium reads NUL-terminated JSON commands on its fd 3 and writes replies and events on fd 4.

Example:
```python
with Browser("/usr/bin/chromium") as browser:
    visit = browser.visit("http://127.0.0.1:8000/", "document.title")
    visit.value, visit.errors, visit.failed_requests
```
"""

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field


@dataclass
class Visit:
    url: str
    value: object = None  # what the expression returned
    errors: list = field(default_factory=list)  # uncaught exceptions and console errors
    failed_requests: list = field(default_factory=list)  # "url -> status or error"


class Browser:
    """Headless Chromium driven over a pipe; use as a context manager."""

    def __init__(self, executable: str, timeout: float = 60.0, width: int = 1280,
                 height: int = 900):
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="kzoo-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}", "about:blank"]
        # A small Python puts the pipe ends on the fds Chromium expects (3: commands,
        # 4: replies), then becomes Chromium (exec), so terminating the process ends the
        # browser. (dash, Debian's /bin/sh, cannot redirect fds above 9.)
        wire = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                "os.execv(sys.argv[3], sys.argv[3:])")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", wire, str(to_chrome_r), str(from_chrome_w), executable,
             *args],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._messages: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0
        self._session = None

    def _read(self):
        buffer = b""
        with os.fdopen(self._from_chrome, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._messages.put(json.loads(message))
        self._messages.put(None)  # the browser closed the pipe

    def send(self, method: str, params: dict | None = None, session: bool = True,
             events: list | None = None) -> dict:
        """Send one command and return its result; events seen meanwhile go to `events`."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._get()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if events is not None:
                events.append(reply)

    def _get(self) -> dict:
        try:
            message = self._messages.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"Chromium sent nothing for {self.timeout} s") from None
        if message is None:
            raise RuntimeError("Chromium closed the DevTools pipe (it crashed or exited)")
        return message

    def __enter__(self):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.send("Target.attachToTarget",
                             {"targetId": target["targetId"], "flatten": True}, session=False)
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")
        return self

    def visit(self, url: str, expression: str) -> Visit:
        """Open `url`, wait for its `load` event (images included), evaluate `expression`."""
        events: list = []
        self.send("Page.navigate", {"url": url}, events=events)
        while not any(e.get("method") == "Page.loadEventFired" for e in events):
            events.append(self._get())
        result = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True}, events=events)
        visit = Visit(url, value=result.get("result", {}).get("value"))
        for event in events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                visit.errors.append(f"{text} ({details.get('url', '')})")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                visit.errors.append(f"{entry['text']} ({entry.get('url', '')})")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                response = params["response"]
                visit.failed_requests.append(f"{response['url']} -> {response['status']}")
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                visit.failed_requests.append(
                    f"request {params['requestId']} -> {params['errorText']}")
        return visit

    def __exit__(self, *exc):
        try:
            if self._session and self._proc.poll() is None:
                self.send("Browser.close", session=False)
        except (RuntimeError, TimeoutError, OSError):
            pass
        finally:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            os.close(self._to_chrome)
            self._profile.cleanup()
