"""`kzoo serve` soak run: many streamed requests from concurrent clients, some cancelled
mid-stream; every completed one answered once and in full, memory flat, no slot leaked.

Saves a random-weight preset (default the GPT-2 124M shape) as a run folder with a word-per-id
tokenizer (`w0`, `w1`, ...: every token is one word, so a completion's text can be counted
against its token count), starts `kzoo serve` on it and sends `--requests` streamed
completions (token-id prompts of 8-40 tokens, `--new-tokens` each, temperature 0.8, a seed per
request) from `--clients` threads. Every `--cancel-every`-th request is cancelled by closing
the connection after `--cancel-after` pieces of text. Then it checks:

- every completed request: HTTP 200, one completion id, exactly one finish_reason (`length` or
  `stop`), a usage chunk whose completion_tokens is `--new-tokens` (`length`) or fewer
  (`stop`), as many words of text as tokens, one `data: [DONE]` and nothing after it; all ids
  distinct;
- memory: the server's RSS (psutil, else /proc/PID/status VmRSS) sampled every
  `--sample-s` seconds; the least-squares slope of RSS over time after the first
  `--warm-s` seconds of load (60) must predict less than max(16 MB, 2 % of RSS) of growth
  over that window ("flat");
- slots: the server's own gauge (`GET /health`: `active` slots and `queued` sequences) back at
  0 within 30 s of the last answer.

Prints the verdict, writes benchmarks/results/serve_soak.json, exits 1 when a check fails.
Not run in CI.

    cd benchmarks && ../.venv/bin/python serve_soak.py          # 1,000 requests, 32 clients
    cd benchmarks && KERAS_BACKEND=jax ../.venv/bin/python serve_soak.py --name serve_soak_jax
    cd benchmarks && ../.venv/bin/python serve_soak.py --preset gpt_nano --requests 60 \\
        --clients 8 --new-tokens 16 --name serve_soak_smoke    # a smoke run (memory: too short)
    cd benchmarks && ../.venv/bin/python serve_soak.py --preset gpt_nano --requests 1200 \\
        --clients 8 --new-tokens 16 --warm-s 15 --sample-s 1 --name serve_soak_smoke  # ~1 min

The first seconds of load compile the programs of new prompt-length buckets (RSS grows by
~100 MB with gpt_nano), which is why memory is judged only after `--warm-s`.

`stream_completion` and `start_kzoo` are also the client and launcher of serve_peer.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import report
from serve_load import ENV, ROOT, save_model, word_tokenizer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2_124m")
    parser.add_argument("--context", type=int, default=256, help="max_sequence_length")
    parser.add_argument("--num-layers", dest="num_layers", type=int,
                        help="fewer blocks than the preset's (a quick run at its widths)")
    parser.add_argument("--name", default="serve_soak",
                        help="results file benchmarks/results/NAME.json (serve_soak)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--new-tokens", dest="new_tokens", type=int, default=64)
    parser.add_argument("--cancel-every", dest="cancel_every", type=int, default=7)
    parser.add_argument("--cancel-after", dest="cancel_after", type=int, default=3,
                        help="pieces of text a cancelled request reads before it hangs up")
    parser.add_argument("--warm-s", dest="warm_s", type=float, default=60.0,
                        help="seconds of load before memory must be flat")
    parser.add_argument("--sample-s", dest="sample_s", type=float, default=2.0)
    parser.add_argument("--max-minutes", dest="max_minutes", type=float, default=90.0,
                        help="the load stops sending new requests after this long")
    return parser.parse_args(argv)


def prepare_run(preset: str, context: int, folder: Path, num_layers=None) -> int:
    """A run folder of `preset` (`num_layers` blocks if given) with random weights and the
    word-per-id tokenizer; its vocab."""
    save_model(preset, context, folder, *([num_layers] if num_layers else []))
    saved = json.loads((folder / "tokenizer" / "tokenizer.json").read_text())
    if saved.get("kind") == "byte":  # kzoo's byte tokenizer (a 257-id model): words instead
        shutil.rmtree(folder / "tokenizer")
        word_tokenizer(saved["vocab_size"], str(folder / "tokenizer"))
        return saved["vocab_size"]
    return len(saved["model"]["vocab"])  # already the word tokenizer, one word per model id


def start_kzoo(run: Path, slots: int, logs: Path, timeout_s: float = 600.0):
    """`kzoo serve run` on a free loopback port: (process, port). Its stdout and stderr go to
    files in `logs` (a pipe nobody reads could fill and stall the server)."""
    out, err = logs / "kzoo.out", logs / "kzoo.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kzoo.cli.main", "serve", str(run), "--port", "0",
             "--slots", str(slots), "--max-queue", "1024", "--max-concurrent", "256"],
            env=ENV, cwd=ROOT, stdout=stdout, stderr=stderr)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"kzoo serve: .* on http://\S+:(\d+)/v1", out.read_text())
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop(proc)
    raise SystemExit(f"kzoo serve did not start: {err.read_text()[-2000:]}")


def stop(proc) -> None:
    """SIGTERM, then SIGKILL after 60 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def get_json(port: int, path: str, timeout: float = 10.0) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def stream_completion(port: int, body: dict, cancel_after: int | None = None,
                      timeout: float = 600.0) -> dict:
    """One streamed POST /v1/completions, read as any OpenAI client would; with `cancel_after`,
    the connection is closed after that many non-empty pieces of text.

    Returns a dict: status, ttft_s (first non-empty text), total_s, ids (completion ids seen),
    text, pieces, finish_reasons, usage (the usage chunk or None), done (`[DONE]` lines),
    after_done (data lines after it), cancelled, error (str or None)."""
    result = {"status": None, "ttft_s": None, "total_s": None, "ids": set(), "text": "",
              "pieces": 0, "finish_reasons": [], "usage": None, "done": 0, "after_done": 0,
              "cancelled": False, "error": None}
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        result["status"] = response.status
        if response.status != 200:
            result["error"] = f"HTTP {response.status}: {response.read()[:300]!r}"
            return result
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if result["done"]:
                result["after_done"] += 1
            if data == "[DONE]":
                result["done"] += 1
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                result["error"] = f"error chunk: {chunk['error']}"
                continue
            if chunk.get("id"):
                result["ids"].add(chunk["id"])
            if chunk.get("usage"):
                result["usage"] = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if choice.get("text"):
                    if result["ttft_s"] is None:
                        result["ttft_s"] = time.perf_counter() - start
                    result["text"] += choice["text"]
                    result["pieces"] += 1
                if choice.get("finish_reason"):
                    result["finish_reasons"].append(choice["finish_reason"])
            if cancel_after is not None and result["pieces"] >= cancel_after:
                result["cancelled"] = True
                response.close()  # hang up mid-stream: the server must free the slot
                break
    except (OSError, http.client.HTTPException, ValueError) as error:
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        conn.close()
        result["total_s"] = time.perf_counter() - start
        if result["ttft_s"] is None:
            result["ttft_s"] = result["total_s"]
    return result


def problems_of(result: dict, new_tokens: int) -> list[str]:
    """Why a completed (not cancelled) streamed request was not answered once and in full."""
    if result["error"]:
        return [result["error"]]
    found = []
    reasons, usage = result["finish_reasons"], result["usage"]
    if len(result["ids"]) != 1:
        found.append(f"{len(result['ids'])} completion ids")
    if len(reasons) != 1 or reasons[0] not in ("length", "stop"):
        found.append(f"finish_reasons {reasons}")
    if usage is None:
        found.append("no usage chunk")
    else:
        n = usage.get("completion_tokens")
        if reasons == ["length"] and n != new_tokens:
            found.append(f"finish_reason length with {n} of {new_tokens} tokens")
        if reasons == ["stop"] and not (isinstance(n, int) and n < new_tokens):
            found.append(f"finish_reason stop with {n} of {new_tokens} tokens")
        # one word per token (the end-of-text token of a "stop" has no word)
        if isinstance(n, int) and len(result["text"].split()) not in (n, n - 1):
            found.append(f"{len(result['text'].split())} words of text for {n} tokens")
    if result["done"] != 1 or result["after_done"]:
        found.append(f"{result['done']} [DONE] lines, {result['after_done']} lines after")
    return found


class Sampler:
    """The server's RSS and its /health gauge every `every` seconds, in a thread."""

    def __init__(self, pid: int, port: int, every: float):
        self.pid, self.port, self.every = pid, port, every
        self.rows, self.start = [], time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_mb(self) -> float:
        try:
            import psutil
            return psutil.Process(self.pid).memory_info().rss / 2**20
        except ImportError:
            text = Path(f"/proc/{self.pid}/status").read_text()
            return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024

    def _run(self):
        while not self._stop.wait(self.every):
            try:
                row = {"t": time.monotonic() - self.start, "rss_mb": self.rss_mb()}
            except Exception:  # noqa: BLE001  the server is gone (psutil's or /proc's error)
                return
            try:
                health = get_json(self.port, "/health")
                row.update(active=health.get("active"), queued=health.get("queued"))
            except (OSError, http.client.HTTPException, ValueError):
                row.update(active=None, queued=None)
            self.rows.append(row)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


def memory_verdict(rows: list[dict], warm_s: float) -> dict:
    """The least-squares slope of RSS after `warm_s` and whether the growth it predicts over
    that window is under max(16 MB, 2 % of RSS)."""
    late = [(r["t"], r["rss_mb"]) for r in rows if r["t"] >= warm_s]
    out = {"rss_first_mb": rows[0]["rss_mb"] if rows else None,
           "rss_last_mb": rows[-1]["rss_mb"] if rows else None,
           "rss_max_mb": max((r["rss_mb"] for r in rows), default=None),
           "rss_samples_after_warm": len(late), "rss_slope_mb_per_min": None,
           "rss_growth_after_warm_mb": None, "memory_flat": None}
    if len(late) < 3:
        return out  # too short a run to say
    ts, ms = [t for t, _ in late], [m for _, m in late]
    t_mean, m_mean = statistics.mean(ts), statistics.mean(ms)
    slope = (sum((t - t_mean) * (m - m_mean) for t, m in late)
             / sum((t - t_mean) ** 2 for t in ts))  # MB per second
    growth = slope * (ts[-1] - ts[0])
    out.update(rss_slope_mb_per_min=60 * slope, rss_growth_after_warm_mb=growth,
               memory_flat=growth < max(16.0, 0.02 * m_mean))
    return out


def soak(port: int, args) -> tuple[list[dict], float]:
    """Every request's result (with its index) and the wall time of the load."""
    results, lock, counter = [], threading.Lock(), iter(range(args.requests))
    deadline = time.monotonic() + 60 * args.max_minutes

    def client():
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            prompt = [(31 * i + 7 * k) % 256 for k in range(8 + i % 33)]  # 8-40 tokens
            cancel = args.cancel_every and i % args.cancel_every == args.cancel_every - 1
            body = {"prompt": prompt, "max_tokens": args.new_tokens, "temperature": 0.8,
                    "seed": i, "stream_options": {"include_usage": True}}
            result = stream_completion(port, body, args.cancel_after if cancel else None)
            result["index"], result["to_cancel"] = i, bool(cancel)
            with lock:
                results.append(result)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:  # each request has its own 600 s socket timeout
        thread.join(60 * args.max_minutes + 700)
    return results, time.perf_counter() - start


def gauge_at_end(port: int, wait_s: float = 30.0) -> dict:
    """/health's slots gauge, polled until nothing is active or queued (or `wait_s`)."""
    deadline, health = time.monotonic() + wait_s, {}
    while time.monotonic() < deadline:
        try:
            health = get_json(port, "/health")
        except (OSError, http.client.HTTPException, ValueError):  # the server is gone
            return {"active_at_end": None, "queued_at_end": None}
        if health.get("active") == 0 and health.get("queued") == 0:
            break
        time.sleep(0.5)
    return {"active_at_end": health.get("active"), "queued_at_end": health.get("queued")}


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        prepare_run(args.preset, args.context, run, args.num_layers)
        proc, port = start_kzoo(run, args.slots, Path(tmp))
        try:
            if "active" not in get_json(port, "/health"):
                print("kzoo serve's /health has no `active` gauge: slots cannot be checked")
            warm = stream_completion(port, {"prompt": [1, 2, 3], "max_tokens": 4})
            if warm["error"]:
                raise SystemExit(f"the warm-up request failed: {warm['error']}")
            with Sampler(proc.pid, port, args.sample_s) as sampler:
                results, wall = soak(port, args)
            gauge = gauge_at_end(port)
            exit_code = proc.poll()
        finally:
            stop(proc)
            err_tail = (Path(tmp) / "kzoo.err").read_text()[-1500:]
    completed = [r for r in results if not r["cancelled"]]
    failed = {r["index"]: problems_of(r, args.new_tokens) for r in completed}
    failed = {i: p for i, p in failed.items() if p}
    ids = [next(iter(r["ids"])) for r in completed if len(r["ids"]) == 1]
    memory = memory_verdict(sampler.rows, args.warm_s)
    row = {"preset": args.preset, "requests": len(results), "clients": args.clients,
           "completed": len(completed), "cancelled": sum(r["cancelled"] for r in results),
           # a request meant to be cancelled that finished before it read enough text
           "cancel_missed": sum(r["to_cancel"] and not r["cancelled"] for r in results),
           "failed": len(failed), "duplicate_ids": len(ids) - len(set(ids)),
           "wall_s": wall,
           "tokens_per_s": sum((r["usage"] or {}).get("completion_tokens", 0)
                               for r in completed) / wall,
           "ttft_p50_s": statistics.median(r["ttft_s"] for r in results) if results else None,
           "max_active": max((r["active"] or 0 for r in sampler.rows), default=None),
           **memory, **gauge, "server_alive": exit_code is None}
    checks = {"all requests sent": len(results) == args.requests,
              "every completed request answered once and in full": not failed
              and row["duplicate_ids"] == 0,
              "memory flat after warm-up": memory["memory_flat"],
              "slot gauge back at 0": gauge["active_at_end"] == 0
              and gauge["queued_at_end"] == 0,
              "server still running at the end": exit_code is None}
    for index, found in list(failed.items())[:10]:
        print(f"request {index}: {'; '.join(found)}")
    report(args.name, [row], {**vars(args), "backend": ENV["KERAS_BACKEND"], "checks": checks,
                                 "rss_samples": sampler.rows})
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'UNKNOWN (run too short)' if ok is None else 'FAIL'}: {name}")
    if exit_code is not None:
        print(f"kzoo serve exited early ({exit_code}): {err_tail}")
    return 0 if all(ok is not False for ok in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
