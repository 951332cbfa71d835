"""`kzoo rate` with pre-sampled candidates: how long one judgement takes over HTTP, from the
POST to the answer that carries the next pair (the record written and fsynced, meta line
first). The issue's target: under 100 ms.

Starts `python -m kzoo.cli.rate --candidates ... --port 0` on a file of N synthetic pairs,
posts N judgements one after another (a mix of left, right, tie, both bad and an edit, each
on a fresh connection as a page's `fetch` makes them), prints median and p95 in ms and writes
benchmarks/results/rate_latency.json.

    cd benchmarks && ../.venv/bin/python rate_latency.py --pairs 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import report

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
JUDGEMENTS = ("left", "right", "tie", "both_bad", "edit")


def call(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        candidates = Path(tmp) / "candidates.jsonl"
        candidates.write_text("".join(
            json.dumps({"prompt": f"Q{i}: say something.\nA:",
                        "completions": [f" answer {i} " + "a" * 200, f" answer {i} " + "b" * 200]})
            + "\n" for i in range(args.pairs)))
        out = Path(tmp) / "ratings.jsonl"
        proc = subprocess.Popen([sys.executable, "-m", "kzoo.cli.rate", "--candidates",
                                 str(candidates), "--out", str(out), "--port", "0"],
                                stdout=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
        try:
            base = next(line for line in proc.stdout if "http://" in line).split()[2]
            base = base.split("/?")[0]
            unit = call(f"{base}/api/next?client=bench")["unit"]
            judge_ms, next_ms = [], []
            for i in range(args.pairs):
                judgement = JUDGEMENTS[i % len(JUDGEMENTS)]
                body = {"client": "bench", "mode": "pairs", "id": unit["id"],
                        "judgement": judgement}
                if judgement == "edit":
                    body.update(base="left", text=unit["completions"][0] + " (edited)")
                start = time.perf_counter()
                answer = call(f"{base}/api/judge", body)
                judge_ms.append((time.perf_counter() - start) * 1000)
                assert answer["recorded"], answer
                unit = answer["unit"]
                start = time.perf_counter()
                call(f"{base}/api/next?client=bench")  # what a reload asks
                next_ms.append((time.perf_counter() - start) * 1000)
            assert unit is None and answer["progress"]["judged"] == args.pairs
            written = len(out.read_text().splitlines())
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    def row(name, times):
        ordered = sorted(times)
        return {"request": name, "n": len(times), "median_ms": statistics.median(ordered),
                "p95_ms": ordered[int(0.95 * (len(ordered) - 1))], "max_ms": ordered[-1]}

    rows = [row("POST /api/judge (record + next pair)", judge_ms),
            row("GET /api/next", next_ms)]
    report("rate_latency", rows, {"pairs": args.pairs, "records_written": written,
                                  "target_ms": 100, "fsync": True})
    return 0 if rows[0]["p95_ms"] < 100 else 1


if __name__ == "__main__":
    sys.exit(main())
