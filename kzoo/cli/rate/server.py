"""The rating page's server: a `ThreadingHTTPServer`, one static page and a JSON API.

API (JSON in and out; `client` is a per-tab id the page keeps in sessionStorage):

- `GET /api/next?client=C&mode=pairs|thumbs`: the unit this tab should judge (the one it holds
  already after a reload, else the first unjudged unit no other tab holds), with progress;
  `unit` is null while live sampling is still running (`sampling` says how far) or when all
  are judged.
- `POST /api/judge` `{"client", "mode", "id", "judgement", "text"?, "base"?}`: record one
  judgement and answer with the next unit, as `/api/next` does. `judgement` is "left",
  "right", "tie", "both_bad", "edit" (pairs: `text` is the corrected answer, `base` the side it
  corrects, "left" or "right") or "up" / "down" (single completions). A unit judged already
  (from another tab) is not recorded again: `"recorded": false`.

Records (see `kzoo.cli.rate.store`): left / right -> `{prompt, chosen: the better side,
rejected: the other}`; edit -> `{prompt, chosen: the corrected text, rejected: the side not
corrected}` (the better answer, improved, against the worse original); up / down ->
`{prompt, completion, label: true / false}`; tie and both_bad -> the meta file only.

Example:
```python
server = make_server("127.0.0.1", 0, RateApp(items, store, provenance={}))
server.serve_forever()
```
"""

from __future__ import annotations

import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from kzoo.cli.rate.sources import MODES, units

PAIR_JUDGEMENTS = ("left", "right", "tie", "both_bad", "edit")
SINGLE_JUDGEMENTS = ("up", "down")
LEASE_S = 600.0  # a tab holds its unit this long without asking again
STATIC = {"/": ("page.html", "text/html"), "/rate.js": ("rate.js", "text/javascript"),
          "/rate.css": ("rate.css", "text/css")}


class JudgementError(ValueError):
    """A judgement the API refuses (answered with HTTP 400 and the message)."""


class RateApp:
    """The state behind the page: items, units per mode, who holds what, and the store.

    Args:
        items: list[dict] or None. fixed items (a candidates file); None with `live`.
        store: RatingStore. where judgements go; its `judged` ids are skipped.
        provenance: dict. {"model", "sampler", ...} recorded with every judgement.
        live: LiveSampler or None. items sampled in the background.

    Example:
    ```python
    app = RateApp(read_candidates("c.jsonl"), RatingStore("r.jsonl"), {"model": None})
    app.next_payload("tab1", "pairs")["unit"]["id"]
    ```
    """

    def __init__(self, items, store, provenance: dict, live=None, title: str = ""):
        self.store, self.provenance, self.live, self.title = store, provenance, live, title
        self._items = list(items or [])
        self._units = {mode: units(self._items, mode) for mode in MODES}
        self._seen_live = 0
        self._leases: dict[str, tuple[str, float]] = {}  # unit id -> (client, time)
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        """Take in the items the live sampler produced since the last call."""
        if self.live is None:
            return
        with self.live.lock:
            new = self.live.items[self._seen_live:]
        if new:
            self._seen_live += len(new)
            self._items.extend(new)
            for mode in MODES:
                self._units[mode].extend(units(new, mode))

    def _units_of(self, mode: str) -> list[dict]:
        if mode not in MODES:
            raise JudgementError(f"mode {mode!r}: expected one of {list(MODES)}")
        return self._units[mode]

    def _pick(self, client: str, mode: str) -> dict | None:
        """The unit for `client`: the one it holds, else a free one, else any unjudged one."""
        now, judged = time.monotonic(), self.store.judged
        todo = [u for u in self._units_of(mode) if u["id"] not in judged]
        for unit in todo:
            holder = self._leases.get(unit["id"])
            if holder and holder[0] == client:
                return unit
        free = [u for u in todo if not (u["id"] in self._leases
                                        and now - self._leases[u["id"]][1] < LEASE_S)]
        # Every remaining unit held by another tab: show one anyway; pair ids keep it single.
        unit = (free or todo or [None])[0]
        if unit is not None:
            for unit_id, (holder, _) in list(self._leases.items()):
                if holder == client:
                    del self._leases[unit_id]
            self._leases[unit["id"]] = (client, now)
        return unit

    def next_payload(self, client: str, mode: str) -> dict:
        """What `/api/next` answers: {"unit", "progress", "sampling", "mode", "counts"}."""
        with self._lock:
            self._refresh()
            unit = self._pick(client, mode)
            all_units = self._units_of(mode)
            judged = sum(1 for u in all_units if u["id"] in self.store.judged)
        sampling = None
        if self.live is not None:
            sampling = {"done": self.live.done, "total": self.live.total,
                        "running": self.live.running, "error": self.live.error}
        total = len(all_units)
        if self.live is not None:  # prompts still to sample count too
            per_item = 1 if mode == "pairs" else 2
            total += per_item * (self.live.total - self.live.done)
        shown = None if unit is None else {k: unit[k] for k in
                                           ("id", "kind", "prompt", "completions")}
        return {"unit": shown, "mode": mode, "title": self.title, "sampling": sampling,
                "progress": {"judged": judged, "total": total}, "counts": dict(self.store.counts)}

    def judge(self, body: dict) -> dict:
        """Record the judgement in `body` (see the module docstring); the next payload.

        Raises:
            JudgementError: an unknown unit, judgement, mode or base, or an empty correction.
        """
        client, mode = str(body.get("client", "")), body.get("mode", "pairs")
        unit_id, judgement = body.get("id"), body.get("judgement")
        with self._lock:
            self._refresh()
            unit = next((u for u in self._units_of(mode) if u["id"] == unit_id), None)
        if unit is None:
            raise JudgementError(f"id {unit_id!r}: no such unit in mode {mode!r}")
        record, kind, extra = self._record(unit, judgement, body)
        item = next(i for i in self._items if i["id"] == unit["item"])
        provenance = {**self.provenance, **item.get("meta", {}), **extra, "mode": mode,
                      "client": client, "prompt": unit["prompt"],
                      "shown": unit["completions"], "swapped": unit["swapped"]}
        recorded = self.store.add(unit_id, judgement, record, kind, provenance)
        with self._lock:
            self._leases.pop(unit_id, None)
        return {"recorded": recorded, **self.next_payload(client, mode)}

    @staticmethod
    def _record(unit: dict, judgement, body: dict):
        prompt, shown = unit["prompt"], unit["completions"]
        if unit["kind"] == "single":
            if judgement not in SINGLE_JUDGEMENTS:
                raise JudgementError(f"judgement {judgement!r} for a single completion: "
                                     f"expected one of {list(SINGLE_JUDGEMENTS)}")
            return ({"prompt": prompt, "completion": shown[0], "label": judgement == "up"},
                    "kto", {})
        if judgement not in PAIR_JUDGEMENTS:
            raise JudgementError(f"judgement {judgement!r} for a pair: expected one of "
                                 f"{list(PAIR_JUDGEMENTS)}")
        if judgement in ("tie", "both_bad"):
            return None, None, {}
        if judgement in ("left", "right"):
            better = 0 if judgement == "left" else 1
            return ({"prompt": prompt, "chosen": shown[better], "rejected": shown[1 - better]},
                    "pairs", {})
        base, text = body.get("base"), body.get("text")
        if base not in ("left", "right"):
            raise JudgementError(f"base {base!r}: expected 'left' or 'right' (the side the "
                                 "correction starts from)")
        if not isinstance(text, str) or not text.strip():
            raise JudgementError("text: the corrected answer is empty")
        better = 0 if base == "left" else 1
        if text == shown[1 - better]:
            raise JudgementError("text: the corrected answer equals the other side: it would "
                                 "be both chosen and rejected")
        return ({"prompt": prompt, "chosen": text, "rejected": shown[1 - better]}, "pairs",
                {"base": base, "original": shown[better], "edited": text != shown[better]})


class _Handler(BaseHTTPRequestHandler):
    server_version = "kzoo-rate"
    app: RateApp  # set on the subclass make_server builds

    def log_message(self, format, *args):  # noqa: A002  one line per request would drown stdout
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type + "; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"),
                   "application/json")

    def _foreign(self) -> bool:
        """A request another site could have made: refused (answered 403).

        On a loopback address the Host header must name it (a DNS-rebinding page names its
        own host), and a judgement must be `application/json`, which a cross-site form or
        `fetch` cannot send without a CORS preflight this server never allows.
        """
        host, port = self.server.server_address[:2]
        if host in ("127.0.0.1", "::1") and self.headers.get("Host") not in (
                f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            return True
        return self.command == "POST" and not self.headers.get(
            "Content-Type", "").startswith("application/json")

    def do_GET(self):  # noqa: N802  the name http.server calls
        if self._foreign():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "not from this page"})
        url = urlsplit(self.path)
        if url.path in STATIC:
            name, content_type = STATIC[url.path]
            body = resources.files("kzoo.cli.rate").joinpath(name).read_bytes()
            return self._send(HTTPStatus.OK, body, content_type)
        if url.path == "/api/next":
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                payload = self.app.next_payload(query.get("client", ""),
                                                query.get("mode", "pairs"))
            except JudgementError as error:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            return self._json(HTTPStatus.OK, payload)
        return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path {url.path}"})

    def do_POST(self):  # noqa: N802
        if self._foreign():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "not from this page"})
        if urlsplit(self.path).path != "/api/judge":
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise JudgementError("the request body must be a JSON object")
            payload = self.app.judge(body)
        except (JudgementError, json.JSONDecodeError) as error:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
        return self._json(HTTPStatus.OK, payload)


def make_server(host: str = "127.0.0.1", port: int = 8765, app: RateApp | None = None):
    """A bound, not yet serving `ThreadingHTTPServer`; set its app with `attach` if not given.

    Bound before the store is opened, so a port in use leaves no file behind.

    Raises:
        ValueError: one line when the port is in use or the host cannot be bound.
    """
    handler = type("Handler", (_Handler,), {"app": app})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as error:
        raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({error.strerror}); "
                         "is another kzoo rate running? pick another --port") from None
    server.daemon_threads = True
    return server


def attach(server: ThreadingHTTPServer, app: RateApp) -> None:
    """Serve `app` from `server` (made by `make_server`)."""
    server.RequestHandlerClass.app = app
