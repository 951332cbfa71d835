"""Baby Shakespeare-char benchmark: kzoo gpt and llama vs keras_hub GPT2CausalLM, side by side.

Same data (TFDS tiny_shakespeare prepared offline, char tokenizer), same input pipeline,
same optimizer (AdamW, cosine 1e-3 -> 1e-4, warmup 100, beta2 0.99, wd 0.1, clip 1.0), same
shape (4 layers, 4 heads, 128 dims, block 64, batch 12), all in one process. Reports training
tokens/s (train steps only, first step of each run excluded: compilation) and the final
validation loss over >= 200 batches of the last 10% of the text (TFDS validation + test).
Then an interleaved speed phase: every variant (also no-XLA and bfloat16) runs 100 timed
steps in turn, for several rounds, so load changes on a shared machine hit all alike.

    python benchmarks/pretrain_shakespeare.py --shakespeare ../shared/data/tinyshakespeare.txt
    python benchmarks/pretrain_shakespeare.py --steps 200 --models kzoo_gpt,keras_hub_gpt2
    python benchmarks/pretrain_shakespeare.py --models "" --speed-rounds 5   # speed only

Writes benchmarks/results/pretrain_shakespeare.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kzoo.data import eval_dataset, load_documents, train_dataset  # noqa: E402
from kzoo.tokenizers import train_tokenizer  # noqa: E402
from kzoo.training.callbacks import IntervalMetrics  # noqa: E402
from kzoo.training.config import load_config  # noqa: E402
from kzoo.training.optimizers import build_adamw  # noqa: E402
from kzoo.training.pretrain import PretrainConfig, build_model  # noqa: E402
from kzoo.training.schedules import WarmupSchedule  # noqa: E402

BLOCK, BATCH = 64, 12
RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def shakespeare_tokens(source: Path, data_dir: str):
    manual = Path(tempfile.mkdtemp(prefix="tinyshakespeare-manual-"))
    shutil.copyfile(source, manual / "input.txt")  # the file TFDS would download
    kwargs = dict(data_dir=data_dir, manual_dir=str(manual))
    train_docs = load_documents("tfds:tiny_shakespeare", "train", **kwargs)
    val_docs = load_documents("tfds:tiny_shakespeare", "validation+test", **kwargs)
    tok = train_tokenizer("char", train_docs)
    return tok, tok.encode_documents(train_docs), tok.encode_documents(val_docs)


def recipe_config(family):
    """The recipe's own config, so the benchmark measures exactly what the recipe trains."""
    path = ROOT / f"recipes/configs/{family}/baby_shakespeare_char_pretrain.yaml"
    return load_config(path, PretrainConfig)


def kzoo_model(family, vocab, dtype=None):
    config = recipe_config(family)
    if dtype:
        config.train.precision = dtype
    return build_model(config, vocab)


def keras_hub_gpt2(vocab, dtype=None):
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocab, num_layers=4, num_heads=4, hidden_dim=128, intermediate_dim=512,
        dropout=0.0, max_sequence_length=BLOCK, dtype=dtype,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def as_keras_hub_inputs(ds):
    def wrap(x, y):
        return {"token_ids": x, "padding_mask": tf.ones_like(x, tf.bool)}, y

    return ds.map(wrap)


MODELS = {
    "kzoo_gpt": (lambda vocab, dtype: kzoo_model("gpt", vocab, dtype), False),
    "kzoo_llama": (lambda vocab, dtype: kzoo_model("llama", vocab, dtype), False),
    "keras_hub_gpt2": (keras_hub_gpt2, True),
}


def compiled_model(name, vocab, dtype, seed, decay_steps, jit):
    """`MODELS[name]` built under `seed` and compiled with the gpt recipe's optimizer (the same
    settings for every model); returns (model, takes_keras_hub_inputs)."""
    build, hub = MODELS[name]
    keras.utils.set_random_seed(seed)
    model = build(vocab, dtype)
    t = recipe_config("gpt").train
    schedule = WarmupSchedule(t.schedule, t.learning_rate, t.warmup_steps, decay_steps,
                              t.min_learning_rate)
    model.compile(
        optimizer=build_adamw(model, schedule, t.weight_decay, t.beta_1, t.beta_2, t.epsilon,
                              t.clip_norm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model, hub


def run_one(name, tok, train_tokens, val_tokens, steps, val_batches, jit, dtype, seed):
    model, hub = compiled_model(name, tok.vocab_size, dtype, seed, steps, jit)
    train = train_dataset(train_tokens, BLOCK, BATCH, seed)
    val = eval_dataset(val_tokens, BLOCK, BATCH, val_batches, seed + 1)
    if hub:
        train, val = as_keras_hub_inputs(train), as_keras_hub_inputs(val)
    meter = IntervalMetrics(steps, BATCH * BLOCK)
    start = time.perf_counter()
    history = model.fit(train, epochs=1, steps_per_epoch=steps, callbacks=[meter], verbose=0)
    wall = time.perf_counter() - start
    batch_loss = tf.function(lambda x, y: model.compute_loss(x, y, model(x, training=False)),
                             jit_compile=jit)
    losses = [float(batch_loss(x, y)) for x, y in val]  # per batch: the mean and its spread
    return {
        "model": name,
        "dtype": dtype or "float32",
        "jit_compile": jit,
        "steps": steps,
        "params": int(model.count_params()),
        "tokens_per_s": meter.tokens_per_second(),
        "train_loss": float(history.history["loss"][-1]),
        "val_loss": float(np.mean(losses)),
        "val_batches": len(losses),
        # nanoGPT's CPU command estimates with 20 batches: this is that estimate's spread.
        "val_loss_sd_20_batches": float(np.std(losses, ddof=1) / np.sqrt(20)),
        "fit_wall_s": wall,
    }


def speed_rounds(names, tok, train_tokens, rounds, steps, seed):
    """Interleaved throughput: each round times `steps` train steps of every variant in turn,
    so a change in machine load hits all variants alike. Returns per-variant lists."""
    variants = {}
    for name in names:
        model_name, _, option = name.partition(":")
        dtype = "mixed_bfloat16" if option == "bf16" else None
        model, hub = compiled_model(model_name, tok.vocab_size, dtype, seed, 2000,
                                    jit=option != "nojit")
        data = train_dataset(train_tokens, BLOCK, BATCH, seed)
        data = as_keras_hub_inputs(data) if hub else data
        model.fit(data, epochs=1, steps_per_epoch=5, verbose=0)  # compile outside the timing
        variants[name] = (model, data)
    results = {name: [] for name in names}
    for _ in range(rounds):
        for name, (model, data) in variants.items():
            meter = IntervalMetrics(steps, BATCH * BLOCK)
            model.fit(data, epochs=1, steps_per_epoch=steps, callbacks=[meter], verbose=0)
            results[name].append(meter.tokens_per_second())
    return results


def nanogpt_rows(args, train_tokens, val_tokens, vocab, seed):
    """Run reference/nanogpt.py with `--torch-python` on the same token ids."""
    folder = Path(tempfile.mkdtemp(prefix="kzoo-nanogpt-"))
    np.save(folder / "train.npy", np.asarray(train_tokens, np.int32))
    np.save(folder / "val.npy", np.asarray(val_tokens, np.int32))
    rows = []
    for variant in filter(None, args.torch_variants.split(",")):
        command = [args.torch_python, str(Path(__file__).parent / "reference" / "nanogpt.py"),
                   "--train", str(folder / "train.npy"), "--val", str(folder / "val.npy"),
                   "--vocab", str(vocab), "--steps", str(args.steps),
                   "--val-batches", str(args.val_batches), "--seed", str(seed)]
        if variant == "no-embedding-decay":
            command.append("--no-embedding-decay")
        elif variant != "decay":
            raise ValueError(f"--torch-variants: unknown {variant!r}; valid: decay, "
                             "no-embedding-decay")
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({**row, "dtype": "float32", "jit_compile": False, "seed": seed})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def pipeline_tokens_per_s(train_tokens, seed, batches=3000):
    ds = train_dataset(train_tokens, BLOCK, BATCH, seed)
    it = iter(ds)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * BATCH * BLOCK / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("KZOO_TEST_DATA", "../shared/data")) / "tinyshakespeare.txt"
    parser.add_argument("--shakespeare", default=str(default),
                        help="local copy of tinyshakespeare.txt (TFDS's input.txt)")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--val-batches", type=int, default=200)
    parser.add_argument("--models", default="kzoo_gpt,kzoo_llama,keras_hub_gpt2")
    parser.add_argument("--extra", default="", help="comma list of extra kzoo_gpt throughput "
                        "runs: nojit, bf16 (each --extra-steps steps)")
    parser.add_argument("--extra-steps", type=int, default=300)
    parser.add_argument("--seeds", default="1337",
                        help="comma list: the 2000-step runs repeat per seed (seed noise)")
    parser.add_argument("--speed-rounds", type=int, default=5,
                        help="interleaved throughput rounds (0: skip)")
    parser.add_argument("--speed-steps", type=int, default=100)
    parser.add_argument("--speed-variants",
                        default="kzoo_gpt,kzoo_llama,keras_hub_gpt2,kzoo_gpt:nojit,kzoo_gpt:bf16")
    parser.add_argument("--torch-python", default=None,
                        help="a Python with PyTorch: also run reference/nanogpt.py on the same "
                        "tokens (kzoo does not depend on PyTorch)")
    parser.add_argument("--torch-variants", default="decay",
                        help="comma list: decay (nanoGPT exactly), no-embedding-decay")
    parser.add_argument("--out", default=str(RESULTS / "pretrain_shakespeare.json"))
    args = parser.parse_args()

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="kzoo-tfds-")
    tok, train_tokens, val_tokens = shakespeare_tokens(Path(args.shakespeare), data_dir)
    print(f"vocab {tok.vocab_size}, train tokens {len(train_tokens)}, val tokens "
          f"{len(val_tokens)}, threads: {os.cpu_count()} CPUs", flush=True)
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    args.seed = seeds[0]  # the extra and speed runs
    for seed in seeds:
        for name in filter(None, args.models.split(",")):
            rows.append({**run_one(name, tok, train_tokens, val_tokens, args.steps,
                                   args.val_batches, True, None, seed), "seed": seed})
            print(json.dumps(rows[-1]), flush=True)
        if args.torch_python:
            rows.extend(nanogpt_rows(args, train_tokens, val_tokens, tok.vocab_size, seed))
    extras = {"nojit": dict(jit=False, dtype=None), "bf16": dict(jit=True, dtype="mixed_bfloat16")}
    for extra in filter(None, args.extra.split(",")):
        for name in ("kzoo_gpt",):
            rows.append(run_one(name, tok, train_tokens, val_tokens, args.extra_steps,
                                args.val_batches, extras[extra]["jit"], extras[extra]["dtype"],
                                args.seed) | {"seed": args.seed})
            print(json.dumps(rows[-1]), flush=True)
    pipe = pipeline_tokens_per_s(train_tokens, args.seed)
    speed = {}
    if args.speed_rounds:
        speed = speed_rounds(args.speed_variants.split(","), tok, train_tokens,
                             args.speed_rounds, args.speed_steps, args.seed)

    ref = next((r for r in rows if r["model"] == "keras_hub_gpt2"), None)
    print("\n| model | seed | dtype | jit | steps | params | train tokens/s | vs keras_hub | "
          f"val loss ({args.val_batches} batches) | sd of a 20-batch estimate |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
        print(f"| {r['model']} | {r['seed']} | {r['dtype']} | {r['jit_compile']} | {r['steps']} | "
              f"{r['params']:,} | {r['tokens_per_s']:,.0f} | {ratio} | {r['val_loss']:.4f} | "
              f"{r['val_loss_sd_20_batches']:.4f} |")
    if len(seeds) > 1:
        print(f"\nMean over seeds {seeds} (2000-step runs):\n")
        print("| model | val loss mean | min | max | train tokens/s mean |")
        print("|---|---|---|---|---|")
        for name in dict.fromkeys(r["model"] for r in rows if r["steps"] == args.steps):
            mine = [r for r in rows if r["model"] == name and r["steps"] == args.steps]
            losses = [r["val_loss"] for r in mine]
            print(f"| {name} | {np.mean(losses):.4f} | {min(losses):.4f} | {max(losses):.4f} | "
                  f"{np.mean([r['tokens_per_s'] for r in mine]):,.0f} |")
    if speed:
        base = speed.get("keras_hub_gpt2")
        print(f"\nInterleaved throughput, {args.speed_rounds} rounds x {args.speed_steps} steps "
              "(median tokens/s; ratio = median of per-round ratios to keras_hub):\n")
        print("| variant | median tokens/s | min | max | vs keras_hub |")
        print("|---|---|---|---|---|")
        for name, values in speed.items():
            ratio = (f"{np.median(np.array(values) / np.array(base)):.2f}x" if base else "-")
            print(f"| {name} | {np.median(values):,.0f} | {min(values):,.0f} | "
                  f"{max(values):,.0f} | {ratio} |")
    print(f"\ninput pipeline alone: {pipe:,.0f} tokens/s (tf.data, same batches)")
    print("nanoGPT's published figure: val loss 1.88 after 2000 iters, from a 20-batch estimate "
          "(its CPU command's --eval_iters=20)")
    out = {
        "benchmark": "pretrain_shakespeare",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/pretrain_shakespeare.py", *sys.argv[1:]]),
        "config": {"block_size": BLOCK, "batch_size": BATCH, "steps": args.steps,
                   "val_batches": args.val_batches, "seeds": seeds},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                    "load_avg_at_end": os.getloadavg()},
        "pipeline_tokens_per_s": pipe,
        "rows": rows,
        "speed_rounds": {"rounds": args.speed_rounds, "steps": args.speed_steps,
                         "tokens_per_s": speed},
        "targets": {"kzoo_gpt_val_loss": 1.88, "kzoo_llama_val_loss": 1.80,
                    "speedup_vs_keras_hub": 1.5},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
