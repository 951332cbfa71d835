"""Shared plumbing for the benchmark scripts: timing, the markdown table and the JSON record."""

import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).parent / "results"


def run_child(script: str, args: list, backend: str, env: dict | None = None):
    """Run `script --child ...` in a fresh process on the Keras `backend`; its result is the
    JSON of its `RESULT ` line. Returns `(result dict or None, stderr)`."""
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run([sys.executable, script, *map(str, args)], env=env,
                          capture_output=True, text=True, cwd=Path(script).parent, check=False)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        return None, proc.stderr
    return json.loads(line[0][len("RESULT "):]), proc.stderr


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall time of `repeats` calls of `fn` (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def markdown_table(rows: list[dict]) -> str:
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [f"{v:,.0f}" if isinstance(v, float) and v > 100 else
                 f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name (CPUs differ between machines: say which): kzoo's own
    `kzoo.training.precision.cpu_name`, imported when called, so a benchmark's parent process,
    which times children on other backends, does not import Keras and TensorFlow at its start."""
    from kzoo.training.precision import cpu_name as kzoo_cpu_name

    return kzoo_cpu_name()


def _command_line() -> str:
    import sys

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    prefix = "" if backend == "tensorflow" else f"KERAS_BACKEND={backend} "
    return (f"cd benchmarks && {prefix}../.venv/bin/python {Path(sys.argv[0]).name} "
            + " ".join(sys.argv[1:])).strip()


def report(name: str, rows: list[dict], settings: dict) -> None:
    """Print the table and write `benchmarks/results/<name>.json`."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package):  # versions without importing: a JAX or torch run has no TF loaded
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    print(markdown_table(rows))
    RESULTS.mkdir(exist_ok=True)
    record = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(), "platform": platform.platform(),
                    **{p: installed(p) for p in ("keras", "tensorflow", "jax", "torch")}},
        "settings": settings,
        "rows": rows,
        # how to make this file again, options and backend included (docs/hooks/tables.py)
        "command": _command_line(),
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / (name + '.json')}")
