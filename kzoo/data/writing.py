"""The writing side of `kzoo prepare`: a shard written to a hidden file and renamed into place,
a reader thread that overlaps reading with encoding, and the progress line.

Example:
```python
from kzoo.data.writing import prefetched
list(prefetched(iter([[1], [2]])))   # [[1], [2]], read in a thread
```
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np


def prefetched(batches, depth: int = 2):
    """Iterate `batches` read in a thread, so that reading overlaps encoding."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def read():
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        items.put(("batch", batch), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(("end", None))
        except BaseException as error:  # handed to the consumer, raised there
            items.put(("error", error))

    reader = threading.Thread(target=read, daemon=True, name="kzoo-prepare-reader")
    reader.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


class ShardWriter:
    """The shard being written for one split: tokens to a hidden temporary file, then renamed."""

    def __init__(self, out: Path, split: str, number: int, dtype: np.dtype):
        self.name = f"{split}-{number:05d}"
        self.out, self.dtype = out, dtype
        self.tmp = out / f".{self.name}.bin.tmp"
        self.file, self.digest = None, hashlib.sha256()
        self.tokens, self.starts = 0, []

    def append(self, ids: np.ndarray, starts: bool) -> None:
        if self.file is None:
            self.file = open(self.tmp, "wb")
        if starts:
            self.starts.append(self.tokens)
        data = ids.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
        self.file.write(data)
        self.digest.update(data)
        self.tokens += len(ids)

    def close(self) -> dict | None:
        if self.file is None:
            return None
        self.file.close()
        self.file = None
        starts = np.asarray(self.starts, "<u4").tobytes()
        starts_tmp = self.out / f".{self.name}.starts.tmp"
        starts_tmp.write_bytes(starts)
        os.replace(starts_tmp, self.out / f"{self.name}.starts")
        os.replace(self.tmp, self.out / f"{self.name}.bin")
        return {"file": f"{self.name}.bin", "tokens": self.tokens,
                "documents": len(self.starts), "sha256": self.digest.hexdigest(),
                "starts_file": f"{self.name}.starts",
                "starts_sha256": hashlib.sha256(starts).hexdigest()}

    def discard(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):  # a full disk fails the last flush too
                self.file.close()
            self.file = None
        for tmp in (self.tmp, self.out / f".{self.name}.starts.tmp"):
            tmp.unlink(missing_ok=True)


class Progress:
    """A one-line progress report on a terminal: tokens, tokens/s, share done, ETA."""

    def __init__(self, total_bytes: int, enabled: bool, quiet: bool):
        self.total, self.enabled, self.quiet = total_bytes, enabled, quiet
        self.tokens, self.done_bytes = 0, 0
        self.began = self.shown = time.perf_counter()

    def update(self, tokens: int, done_bytes: int) -> None:
        self.tokens += tokens
        self.done_bytes = max(self.done_bytes, done_bytes)
        now = time.perf_counter()
        if not self.enabled or now - self.shown < 0.5:
            return
        self.shown = now
        rate = self.tokens / max(now - self.began, 1e-9)
        line = f"prepare: {self.tokens / 1e6:,.1f}M tokens, {rate / 1e3:,.0f}k tokens/s"
        if self.total and self.done_bytes:
            share = min(self.done_bytes / self.total, 1.0)
            eta = (now - self.began) * (1 - share) / max(share, 1e-9)
            line += f", {share:.0%} of {self.total / 1e6:,.0f} MB, ETA {clock(eta)}"
        print("\r" + line.ljust(79), end="", file=sys.stderr, flush=True)

    def finish(self, index: dict) -> None:
        if self.enabled:
            print(file=sys.stderr)
        wall = time.perf_counter() - self.began
        splits = index["splits"]
        say(not self.quiet, f"prepared: {splits['train']['tokens']:,} training and "
             f"{splits['validation']['tokens']:,} validation tokens in "
             f"{sum(len(s['shards']) for s in splits.values())} shards, {clock(wall)} "
             f"({self.tokens / max(wall, 1e-9):,.0f} tokens/s this run)")


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def say(enabled, message: str) -> None:
    if enabled is not False:
        print(message, file=sys.stderr, flush=True)
