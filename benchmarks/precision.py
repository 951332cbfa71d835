"""`train.precision`: float32 vs mixed_bfloat16 on each backend, with nanoGPT beside them.

Issue 27 item 2. On each Keras backend (one child process each) the baby Shakespeare-char
recipe (recipes/configs/gpt/baby_shakespeare_char_pretrain.yaml, run through `pretrain()`,
`--steps` steps) trains in both precisions: training tokens/s (kzoo's meter: train steps
only, compilation excluded) and the validation loss over the recipe's 200 batches. Then a
speed-only run at the gpt_mini shape (block 128, batch 8, `--mini-steps` steps), where the
matrix products are large enough for bfloat16 units to matter. nanoGPT-style PyTorch
(benchmarks/reference/nanogpt.py, the baby shape) runs in float32 and under bfloat16
autocast on the same text. Every run in one invocation, so the ratios share the machine.

    python benchmarks/precision.py --shakespeare ../shared/data/tinyshakespeare.txt
    python benchmarks/precision.py --steps 300 --mini-steps 40 --backends tensorflow,torch

Writes benchmarks/results/precision.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import cpu_name, report, run_child

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PRECISIONS = ("float32", "mixed_bfloat16")


def _recipe(run_dir, manual, precision, steps, mini):
    from kzoo.training.config import load_config
    from kzoo.training.pretrain import PretrainConfig

    overrides = [f"run_dir={run_dir}", f"data.manual_dir={manual}",
                 f"data.data_dir={Path(run_dir).parent / 'tfds'}",
                 f"train.precision={precision}", f"train.steps={steps}",
                 f"train.eval_interval={steps}", "train.verbose=0", "train.tensorboard=false",
                 "sample.max_new_tokens=0"]
    if mini:  # the speed shape: nanoGPT's Shakespeare-char model, a short run
        overrides += ["model.preset=gpt_mini", "model.args.max_sequence_length=128",
                      "train.block_size=128", "train.batch_size=8", "train.val_batches=5",
                      "train.warmup_steps=5"]
    return load_config(ROOT / "recipes/configs/gpt/baby_shakespeare_char_pretrain.yaml",
                       PretrainConfig, overrides=overrides)


def child(args) -> dict:
    import keras

    from kzoo.training.pretrain import pretrain

    rows = []
    work = Path(tempfile.mkdtemp(prefix="kzoo-precision-"))
    manual = work / "manual"
    manual.mkdir()
    shutil.copyfile(args.shakespeare, manual / "input.txt")  # the file TFDS would download
    for shape, steps in (("gpt_baby", args.steps), ("gpt_mini", args.mini_steps)):
        for precision in PRECISIONS:
            config = _recipe(work / f"{shape}-{precision}", manual, precision, steps,
                             shape == "gpt_mini")
            result = pretrain(config)
            rows.append({"backend": keras.backend.backend(), "model": f"kzoo {shape}",
                         "precision": precision, "steps": steps,
                         "tokens_per_s": result["tokens_per_s"],
                         "val_loss": result["val_loss"] if shape == "gpt_baby" else None})
    shutil.rmtree(work, ignore_errors=True)
    return {"rows": rows}


def nanogpt_rows(shakespeare: str, steps: int, torch_python: str) -> list:
    """nanoGPT-style PyTorch on the recipe's char tokens, float32 and bf16 autocast."""
    import numpy as np

    text = Path(shakespeare).read_text()
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    cut = int(0.9 * len(ids))  # the last 10% validates, as nanoGPT and the recipe
    work = Path(tempfile.mkdtemp(prefix="kzoo-nanogpt-"))
    np.save(work / "train.npy", ids[:cut])
    np.save(work / "val.npy", ids[cut:])
    rows = []
    for dtype in ("float32", "bfloat16"):
        proc = subprocess.run(
            [torch_python, str(HERE / "reference/nanogpt.py"), "--train", work / "train.npy",
             "--val", work / "val.npy", "--vocab", str(len(chars)), "--steps", str(steps),
             "--dtype", dtype], capture_output=True, text=True, check=True)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"backend": "torch (nanoGPT)", "model": "nanoGPT baby",
                     "precision": "float32" if dtype == "float32" else "bf16 autocast",
                     "steps": steps, "tokens_per_s": out["tokens_per_s"],
                     "val_loss": out["val_loss"]})
    shutil.rmtree(work, ignore_errors=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shakespeare",
                        default=str(ROOT.parent / "shared/data/tinyshakespeare.txt"))
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--steps", type=int, default=2000, help="baby recipe steps")
    parser.add_argument("--mini-steps", type=int, default=60, help="gpt_mini speed steps")
    parser.add_argument("--torch-python", default=sys.executable)
    parser.add_argument("--name", default="precision", help="results file name (no .json)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    rows = []
    for backend in args.backends.split(","):
        result, stderr = run_child(__file__, ["--child", "--shakespeare", args.shakespeare,
                                              "--steps", args.steps,
                                              "--mini-steps", args.mini_steps], backend)
        if result is None:
            sys.exit(f"the {backend} child failed:\n{stderr[-3000:]}")
        rows += result["rows"]
    rows += nanogpt_rows(args.shakespeare, args.steps, args.torch_python)
    for row in rows:  # the speed-up of each bf16 run over the same model's float32 run
        base = [r for r in rows if r["backend"] == row["backend"] and r["model"] == row["model"]
                and r["precision"] == "float32"]
        row["x_float32"] = row["tokens_per_s"] / base[0]["tokens_per_s"] if base else None
    report(args.name, rows, {"steps": args.steps, "mini_steps": args.mini_steps,
                               "cpu": cpu_name(), "recipe": "gpt/baby_shakespeare_char_pretrain"})


if __name__ == "__main__":
    main()
