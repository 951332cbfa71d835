"""Where `kzoo rate` writes judgements: append-only JSONL files that survive reloads, restarts
and two tabs.

Three files, named after `--out` (which must end in `.jsonl`):

- `OUT` (`ratings.jsonl`): the preference pairs, TRL's form `{"prompt", "chosen", "rejected"}`:
  what `kzoo dpo` / `kzoo reward` read (`kzoo.data.preference.read_preference_records`).
- `OUT` with `.kto.jsonl` (`ratings.kto.jsonl`): thumbs up / down, TRL's unpaired form
  `{"prompt", "completion", "label"}`: what `kzoo kto` reads (`kzoo.data.unpaired`).
- `OUT` with `.meta.jsonl` (`ratings.meta.jsonl`): one line per judgement, ties and "both bad"
  included (they make no training record): the unit id, the judgement, the training record
  it produced (or null), whether the answer was edited and the original texts, and the
  provenance (model, sampler, seed, time).

Each line is written by one `os.write` on an `O_APPEND` descriptor followed by `fsync`, under
a lock, meta line first: the meta file is the source of truth. Opening the store again reads
it back: judged unit ids are not shown again, a torn last line (a crash mid-write) is cut off,
and a training record the meta file holds but the data file lacks (a crash between the two
writes) is appended. A second server on the same `OUT` is refused (an exclusive `flock`).

Example:
```python
from kzoo.cli.rate.store import RatingStore
store = RatingStore("ratings.jsonl")
store.add("a1", "left", {"prompt": "2+2=", "chosen": "4", "rejected": "5"}, "pairs", {})
store.add("a1", "left", None, None, {})   # False: a1 is judged already, nothing written
```
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

KINDS = ("pairs", "kto")


def sibling_paths(out: str | os.PathLike) -> dict[str, Path]:
    """{"pairs": OUT, "kto": OUT.kto.jsonl, "meta": OUT.meta.jsonl} for `--out OUT`.

    Raises:
        ValueError: OUT does not end in `.jsonl`, or its folder does not exist.
    """
    out = Path(out)
    if out.suffix != ".jsonl":
        raise ValueError(f"--out {out}: must end in .jsonl (the trainers read JSONL records)")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist")
    stem = out.with_suffix("")
    return {"pairs": out, "kto": Path(f"{stem}.kto.jsonl"), "meta": Path(f"{stem}.meta.jsonl")}


def _complete_lines(path: Path) -> list[str]:
    """The file's complete lines; a torn last line (no newline) is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:  # a crash mid-write left part of a line
            f.truncate(end)
    return [line for line in data[:end].decode("utf-8").split("\n") if line.strip()]


def _setting(entry: dict) -> dict:
    return {k: entry.get(k) for k in ("model", "sampler", "max_new_tokens", "template")}


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


class RatingStore:
    """The judgements of one `--out`, read back on open and appended one line at a time.

    Args:
        out: str | PathLike. the pairs file (`*.jsonl`); the KTO and meta files sit beside it.

    Attributes:
        judged: set[str]. ids of the units judged so far (from every session).
        setting_of: dict. unit id -> its judgement's {model, sampler, max_new_tokens,
            template} (how an older kzoo's prompt-hash ids are matched to a sampling).
        counts: dict. {"pairs": n, "kto": m, "none": k} training records written (none: ties
            and both-bad).

    Raises:
        ValueError: a bad OUT, a meta line that is not JSON, or OUT in use by another server.

    Example:
    ```python
    store = RatingStore("ratings.jsonl"); len(store.judged)
    ```
    """

    def __init__(self, out: str | os.PathLike):
        self.paths = sibling_paths(out)
        self._lock = threading.Lock()
        self._meta_fd = os.open(self.paths["meta"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # Two servers appending to the same files would judge the same units twice.
            fcntl.flock(self._meta_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._meta_fd)
            raise ValueError(f"--out {self.paths['pairs']}: another kzoo rate is writing it "
                             f"({self.paths['meta']} is locked)") from None
        self._fds: dict[str, int] = {}
        self.judged: set[str] = set()
        self.setting_of: dict[str, dict] = {}
        self.counts = {"pairs": 0, "kto": 0, "none": 0}
        self._recover()

    def _recover(self) -> None:
        expected: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for number, text in enumerate(_complete_lines(self.paths["meta"]), 1):
            try:
                entry = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.paths['meta']} line {number}: not JSON ({error.msg})") \
                    from None
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise ValueError(f"{self.paths['meta']} line {number}: expected an object with "
                                 "a string 'id' (the unit judged)")
            self.judged.add(entry["id"])
            self.setting_of[entry["id"]] = _setting(entry)
            if entry.get("file") in KINDS:
                expected[entry["file"]].append(entry["record"])
            else:
                self.counts["none"] += 1
        for kind in KINDS:
            have = len(_complete_lines(self.paths[kind]))
            # The meta line is written first: a crash before the data line leaves it missing.
            for record in expected[kind][have:]:
                self._append(kind, _line(record))
            self.counts[kind] = max(have, len(expected[kind]))

    def _append(self, kind: str, data: bytes) -> None:
        if kind not in self._fds:  # opened on first use: no empty KTO file for a pairs session
            self._fds[kind] = os.open(self.paths[kind], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                      0o644)
        fd = self._fds[kind]
        os.write(fd, data)
        os.fsync(fd)

    def add(self, unit_id: str, judgement: str, record: dict | None, kind: str | None,
            provenance: dict) -> bool:
        """Record one judgement; False (nothing written) when `unit_id` is judged already.

        Args:
            unit_id: str. the pair's (or single completion's) id.
            judgement: str. "left", "right", "tie", "both_bad", "edit", "up" or "down".
            record: dict or None. the training record (None for tie / both bad).
            kind: str or None. "pairs" or "kto": the file `record` goes to.
            provenance: dict. model, sampler, seed, original texts...: kept in the meta file.
        """
        if (record is None) != (kind is None) or kind not in (*KINDS, None):
            raise ValueError(f"kind must be one of {KINDS} with a record, or None without one; "
                             f"got {kind!r}")
        entry = {"id": unit_id, "judgement": judgement, "file": kind, "record": record,
                 "time": datetime.now(UTC).isoformat(timespec="milliseconds"), **provenance}
        with self._lock:
            if unit_id in self.judged:
                return False
            os.write(self._meta_fd, _line(entry))
            os.fsync(self._meta_fd)
            if kind is not None:
                self._append(kind, _line(record))
            self.judged.add(unit_id)
            self.setting_of[unit_id] = _setting(entry)
            self.counts[kind or "none"] += 1
        return True

    def close(self) -> None:
        """Close the files and release the lock."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            if self._meta_fd is not None:
                os.close(self._meta_fd)  # closing releases the flock
                self._meta_fd = None
