"""The pre-training recipe end to end: wall time and the per-interval overhead, side by side.

Runs, in one go on the same machine and the same token ids:
- kzoo's `recipes/pretrain.py` on the gpt baby Shakespeare-char config (validation of
  `val_batches`, a sample, `best.keras` and a verified checkpoint at every interval);
- optionally the same recipe from an older revision (`--baseline-rev`, a git worktree);
- the nanoGPT-style PyTorch reference doing what nanoGPT's `train.py` does between intervals
  (`--torch-python`: train and val loss estimates of `val_batches` each, a checkpoint with the
  optimizer when val improves);
- each part of kzoo's interval on its own (validation, sample, the two saves).

The overhead of an interval is everything between its last training step and the next
interval's first: `overhead_s` in metrics.csv. For the baseline, which has no such column, it
is (fit wall time - training-step time) / intervals, computed the same way for both.

    cd benchmarks && ../.venv/bin/python recipe_overhead.py \\
        --shakespeare ../../shared/data/tinyshakespeare.txt --torch-python /tmp/tv/bin/python \\
        --baseline-rev d047abe
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_name, report

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "recipes/configs/gpt/baby_shakespeare_char_pretrain.yaml"
ENV = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")


def recipe_run(checkout: Path, work: Path, name: str, steps: int, interval: int) -> dict:
    """Run the pretrain recipe of `checkout` as a new process; its wall time and overheads."""
    run_dir = work / name
    out = work / f"{name}.json"
    command = [sys.executable, str(checkout / "recipes/pretrain.py"), "--config",
               str(checkout / CONFIG), "--result-json", str(out)]
    for item in (f"run_dir={run_dir}", f"data.manual_dir={work / 'manual'}",
                 f"data.data_dir={work / 'tfds'}", f"train.steps={steps}",
                 f"train.eval_interval={interval}", "train.verbose=0"):
        command += ["--set", item]
    env = dict(ENV, PYTHONPATH=str(checkout))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=checkout, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    intervals = steps // interval
    train_s = steps * 12 * 64 / result["tokens_per_s"]
    row = {"name": name, "process_wall_s": wall, "fit_wall_s": result["wall_s"],
           "val_loss": result["val_loss"], "tokens_per_s": result["tokens_per_s"],
           "overhead_per_interval_s": (result["wall_s"] - train_s) / intervals}
    with (run_dir / "metrics.csv").open() as f:
        measured = [float(r["overhead_s"]) for r in csv.DictReader(f) if "overhead_s" in r]
    if measured:
        later = measured[1:]  # the first row has none (nothing came before it)
        row.update(overhead_s_rows=later, overhead_median_s=statistics.median(later[1:]),
                   overhead_first_s=later[0])
    return row


def reference_run(python: str, work: Path, steps: int, interval: int, val_batches: int,
                  vocab: int) -> dict:
    out_dir = work / "nanogpt"
    out_dir.mkdir()
    command = [python, str(ROOT / "benchmarks/reference/nanogpt.py"), "--train",
               str(work / "train.npy"), "--val", str(work / "val.npy"), "--vocab", str(vocab),
               "--steps", str(steps), "--val-batches", str(val_batches), "--eval-interval",
               str(interval), "--eval-iters", str(val_batches), "--out-dir", str(out_dir)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    row = json.loads(done.stdout.strip().splitlines()[-1])
    train_s = row["fit_wall_s"]
    return {"name": "nanoGPT-style PyTorch (train.py loop)", "process_wall_s": wall,
            "val_loss": row["val_loss"], "tokens_per_s": row["tokens_per_s"],
            "overhead_per_interval_s": (wall - train_s) / (steps // interval),
            "torch": row["torch"]}


def parts_of_an_interval(work: Path) -> dict:
    """Each thing kzoo does between intervals, timed on its own (median of 5, after one)."""
    import keras

    from kzoo.data import eval_dataset  # noqa: F401  (imports TF data first)
    from kzoo.data.pipeline import eval_windows
    from kzoo.tokenizers import load_tokenizer
    from kzoo.training import PretrainConfig, build_model, load_config
    from kzoo.training import callbacks as cb
    from kzoo.training.checkpoints import save_checkpoint
    from kzoo.training.pretrain import _compile

    config = load_config(ROOT / CONFIG, PretrainConfig)
    run = work / "kzoo"
    tokenizer = load_tokenizer(run / "tokenizer")
    model = build_model(config, tokenizer.vocab_size)
    _compile(model, config)
    model.optimizer.build(model.trainable_variables)
    import numpy as np

    tokens = np.load(work / "val.npy")
    t = config.train
    val = eval_windows(tokens, t.block_size, t.batch_size, t.val_batches, config.seed + 1)
    clone = cb.uncompiled_clone(model)
    s = config.sample
    parts = {
        "validation": lambda: model.evaluate(val, verbose=0),
        "sample": lambda: cb.generate_text(model, tokenizer, s.prompt, s.max_new_tokens,
                                           s.temperature, s.top_k, seed=1),
        "best.keras": lambda: cb.atomic_save_model(model, work / "best.keras", clone),
        "checkpoint": lambda: save_checkpoint(model, work / "backup", 1, {}, keep=2),
    }
    timings = {}
    for name, fn in parts.items():
        fn()
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
        timings[name] = statistics.median(seconds)
    keras.backend.clear_session()
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT.parent / "shared/data/tinyshakespeare.txt"
    parser.add_argument("--shakespeare", default=str(default))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-interval", type=int, default=250)
    parser.add_argument("--torch-python", default=None, help="a Python with torch installed")
    parser.add_argument("--baseline-rev", default=None,
                        help="also run the recipe of this git revision (a worktree)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kzoo-overhead-"))
    (work / "manual").mkdir()
    shutil.copy(args.shakespeare, work / "manual/input.txt")
    rows = [recipe_run(ROOT, work, "kzoo", args.steps, args.eval_interval)]
    print(json.dumps(rows[-1]), flush=True)

    import numpy as np

    from kzoo.data import load_documents
    from kzoo.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(work / "kzoo/tokenizer")
    config_data = {"source": "tfds:tiny_shakespeare", "manual_dir": str(work / "manual"),
                   "data_dir": str(work / "tfds")}
    for split, name in (("train", "train"), ("validation+test", "val")):
        docs = load_documents(config_data["source"], split, config_data["data_dir"],
                              config_data["manual_dir"])
        np.save(work / f"{name}.npy", np.asarray(tokenizer.encode_documents(docs), np.int32))
    parts = parts_of_an_interval(work)
    print(json.dumps(parts), flush=True)

    if args.baseline_rev:
        tree = work / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree),
                        args.baseline_rev], check=True, capture_output=True)
        try:
            rows.append(recipe_run(tree, work, f"kzoo {args.baseline_rev}", args.steps,
                                   args.eval_interval))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)
        print(json.dumps(rows[-1]), flush=True)
    if args.torch_python:
        rows.append(reference_run(args.torch_python, work, args.steps, args.eval_interval,
                                  200, tokenizer.vocab_size))
        print(json.dumps(rows[-1]), flush=True)

    table = [{"run": r["name"], "process wall s": r["process_wall_s"],
              "overhead per interval s": r["overhead_per_interval_s"],
              "train tokens/s": r["tokens_per_s"], "val loss": r["val_loss"]} for r in rows]
    print(f"\nbaby Shakespeare-char, {args.steps} steps, an interval every "
          f"{args.eval_interval} (validation of 200 batches)\n")
    settings = {"cpu": cpu_name(), "steps": args.steps, "eval_interval": args.eval_interval,
                "val_batches": 200, "interval_parts_s": parts}
    if "overhead_median_s" in rows[0]:
        settings["kzoo_overhead_s_metrics_csv"] = {"first": rows[0]["overhead_first_s"],
                                                   "median_of_the_rest":
                                                   rows[0]["overhead_median_s"]}
    if args.baseline_rev:
        settings["baseline_rev"] = args.baseline_rev
    shutil.rmtree(work, ignore_errors=True)
    report("recipe_overhead", table, settings)
    print("\n| part of kzoo's interval | seconds |\n|---|---|")
    for name, seconds in parts.items():
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
