"""The PyTorch train step, eager against compiled (`kzoo.backend.compile_train_step`).

For gpt_baby and gpt_mini (the shapes of benchmarks/backends.py), one fresh PyTorch process
per mode measures a `fit` step (AdamW, next-token cross-entropy):
- "eager": Keras' own torch step (`train.jit_compile: false`);
- "graph": kzoo's step recorded once as a graph of ATen ops and replayed (`jit_compile: true`);
- "aot_eager", "inductor": that graph through `torch.compile` with this backend (inductor
  generates and compiles C++ on a CPU; each process gets an empty inductor cache, so its
  compile time is a cold one);
- "nanogpt", "nanogpt_compile": nanoGPT's PyTorch reference (benchmarks/reference/nanogpt.py)
  on the same batch, eager and with `torch.compile(model)` as its `compile=True` does.
Columns: steady tokens/s (best of `--repeats` runs of `--steps` steps), `compile_s` (the first
step's time minus a steady step's: recording plus compiling), and `run_500_s`, the seconds of a
500-step run (the recipes' default `train.steps`) including that compile: the mode with the
smallest is the better default.

Run: `python benchmarks/torch_compile.py [--quick] [--modes eager,graph,aot_eager,inductor]`
(`--quick`: gpt_baby only, few steps: a smoke run, not a measurement).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import best_of, cpu_name, report, run_child

HERE = Path(__file__).resolve().parent
TRAIN = {"gpt_baby": (12, 64), "gpt_mini": (8, 128)}  # preset: (batch, seq)
MODES = ("eager", "graph", "aot_eager", "inductor", "nanogpt", "nanogpt_compile")
RUN_STEPS = 500


def _nanogpt(preset, compiled, steps, repeats):
    """nanoGPT's train step (AdamW) on the same shape; `compiled`: torch.compile(model)."""
    import torch

    sys.path.insert(0, str(HERE / "reference"))
    from nanogpt import GPT

    from kzoo.models import get_preset

    batch, seq = TRAIN[preset]
    p = get_preset(preset)
    torch.manual_seed(0)
    model = GPT(65, 256, p["num_layers"], p["num_heads"], p["hidden_dim"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = torch.compile(model) if compiled else model
    ids = torch.randint(0, 65, (batch, seq + 1))
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def step():
        loss = run(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    step_s = best_of(lambda: [step() for _ in range(steps)], repeats) / steps
    return {"tokens_per_s": batch * seq / step_s, "step_ms": step_s * 1e3,
            "compile_s": max(first - step_s, 0.0), "traces": 1 if compiled else 0,
            "eager_steps": 0}


def _measure(preset, mode, steps, repeats, threads):
    import keras
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)

    if mode.startswith("nanogpt"):
        return _nanogpt(preset, mode == "nanogpt_compile", steps, repeats)
    from kzoo import backend
    from kzoo.models import CausalLM

    batch, seq = TRAIN[preset]
    keras.utils.set_random_seed(0)
    model = CausalLM.from_preset(preset, vocab_size=65, max_sequence_length=256, dropout=0.0)
    jit = False if mode == "eager" else mode
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=backend.train_jit_compile(jit))
    backend.compile_train_step(model, jit)
    ids = np.random.default_rng(0).integers(0, 65, (batch * steps, seq + 1)).astype("int32")
    x, y = ids[:, :-1], ids[:, 1:]
    start = time.perf_counter()
    model.fit(x[:batch], y[:batch], batch_size=batch, verbose=0)  # records / compiles
    first = time.perf_counter() - start
    step_s = best_of(lambda: model.fit(x, y, batch_size=batch, verbose=0), repeats) / steps
    traces = getattr(model.train_function, "traces", 0)
    return {"tokens_per_s": batch * seq / step_s, "step_ms": step_s * 1e3,
            "compile_s": max(first - step_s, 0.0), "traces": traces,
            "eager_steps": getattr(model.train_function, "eager_steps", 0)}


def _child(preset, mode, steps, repeats, threads):
    import json

    print("RESULT " + json.dumps(_measure(preset, mode, int(steps), int(repeats), int(threads))),
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="gpt_baby, 3 steps: a smoke run")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {list(MODES)}")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, the best kept")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default, one per core)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        sys.exit(f"--modes: unknown {bad}; valid: {list(MODES)}")
    presets = ["gpt_baby"] if args.quick else list(TRAIN)
    steps, repeats = (3, 1) if args.quick else (args.steps, args.repeats)
    rows = []
    for preset in presets:
        eager_run = None
        for mode in modes:
            with tempfile.TemporaryDirectory(prefix="kzoo-inductor-") as cache:
                result, err = run_child(str(HERE / "torch_compile.py"),
                                        ["--child", preset, mode, steps, repeats,
                                         args.threads], "torch",
                                        env={"TORCHINDUCTOR_CACHE_DIR": cache})
            if result is None:
                print(f"{preset} {mode} failed:\n{err[-3000:]}", file=sys.stderr)
                continue
            run_s = result["compile_s"] + RUN_STEPS * result["step_ms"] / 1e3
            if mode == "eager":
                eager_run = run_s
            rows.append({"preset": preset, "mode": mode,
                         "tokens_per_s": round(result["tokens_per_s"], 1),
                         "step_ms": round(result["step_ms"], 2),
                         "compile_s": round(result["compile_s"], 2),
                         f"run_{RUN_STEPS}_s": round(run_s, 1),
                         "vs_eager": round(eager_run / run_s, 2) if eager_run else None,
                         "traces": result["traces"]})
            print(rows[-1], flush=True)
    if rows:
        report("torch_compile", rows, {"train": TRAIN, "steps": steps, "repeats": repeats,
                                       "run_steps": RUN_STEPS, "cpu": cpu_name(),
                                       "threads": args.threads or os.cpu_count()})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:])
    else:
        main()
