"""The rating page's state and JSON API; `kzoo.cli.rate.asgi` serves it (Starlette on uvicorn,
with the limits and checks listed there).

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
Errors are `{"error": "..."}` with a 4xx status (a refused judgement: 400).

Example:
```python
server = make_server("127.0.0.1", 0, RateApp(items, store, provenance={}))
server.serve_forever()
```
"""

from __future__ import annotations

import threading
import time

from kzoo.cli.rate.sources import MODES, JudgementError, units

PAIR_JUDGEMENTS = ("left", "right", "tie", "both_bad", "edit")
SINGLE_JUDGEMENTS = ("up", "down")
LEASE_S = 600.0  # a tab holds its unit this long without asking again


class RateApp:
    """The state behind the page: items, units per mode, who holds what, and the store.

    Args:
        items: list[dict] or None. fixed items (a candidates file); None with `live`.
        store: RatingStore. where judgements go; its `judged` ids are skipped.
        provenance: dict. {"model", "sampler", ...} recorded with every judgement.
        live: LiveSampler or None. items sampled in the background.
        title: str. what the page's header names (the --out file).
        judged_before: int. prompts judged in earlier sessions and not sampled again (live
            sampling): counted in the progress, one unit each in pairs mode, two in thumbs.

    Example:
    ```python
    app = RateApp(read_candidates("c.jsonl"), RatingStore("r.jsonl"), {"model": None})
    app.next_payload("tab1", "pairs")["unit"]["id"]
    ```
    """

    def __init__(self, items, store, provenance: dict, live=None, title: str = "",
                 judged_before: int = 0):
        self.store, self.provenance, self.live, self.title = store, provenance, live, title
        self.judged_before = judged_before
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
        per_item = 1 if mode == "pairs" else 2
        if self.live is not None:  # prompts still to sample count too
            total += per_item * (self.live.total - self.live.done)
        # After a restart the prompts judged before are not sampled again: still part of the work.
        judged += per_item * self.judged_before
        total += per_item * self.judged_before
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


def make_server(host: str = "127.0.0.1", port: int = 8765, app: RateApp | None = None,
                token: str | None = None):
    """A bound, not yet serving `kzoo.cli.rate.asgi.RateServer` (Starlette on uvicorn); set
    its app with `attach` if not given.

    Bound before the store is opened, so a port in use leaves no file behind.

    Args:
        host: str. the address to listen on.
        port: int. the port, 0 for any free one.
        app: RateApp or None. what it serves.
        token: str or None. required on every request when set (see `kzoo.cli.rate.asgi`).

    Raises:
        ValueError: one line when the port is in use or the host cannot be bound.
    """
    from kzoo.cli.rate.asgi import RateServer

    return RateServer(host, port, app, token)


def attach(server, app: RateApp) -> None:
    """Serve `app` from `server` (made by `make_server`)."""
    server.app = app


__all__ = ["JudgementError", "RateApp", "attach", "make_server"]
