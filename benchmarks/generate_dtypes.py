"""Generation with float32, bfloat16 and int8 weights, beside transformers, in one run.

- bandwidth: the machine's read bandwidth measured here (an XLA reduction over 1 GiB, numpy's
  sum over 1 GiB, and the 49 independent one-row products of the 124M weights in one XLA
  program, which both cores run at once); the ceiling of batch-1 decoding is
  bandwidth / bytes of weights per token.
- speed: greedy, 128 new tokens after 16, batch 1 and 8, GPT-2 124M shape with random
  weights; kzoo through the reference path (the model's `call_with_cache`), the default
  prepared path (live weights transposed to (out, in) once per call), bfloat16 and int8
  snapshots (`quantize_for_generation`), and bfloat16 without XLA (oneDNN); transformers
  `generate` (torch, 2 threads) in a subprocess. Timed after a warm-up in the same bucket,
  variants interleaved, best of `--repeats`.
- quality: a gpt_nano char model trained for `--train-steps` on tinyshakespeare; share of
  identical greedy tokens (same slot) over 256 new tokens from 4 prompts against float32,
  and validation perplexity per weight mode.

Run: `nice -n 5 python benchmarks/generate_dtypes.py [--repeats 2]`
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import report

PROMPT, NEW = 16, 128
GPT2 = dict(vocab_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
            intermediate_dim=3072, max_sequence_length=1024)


def bandwidth() -> dict:
    import numpy as np
    import tensorflow as tf

    big = tf.Variable(tf.ones((2**28,), tf.float32))  # 1 GiB
    reduce = tf.function(lambda: tf.reduce_sum(big), jit_compile=True)
    rng = np.random.default_rng(0)
    shapes = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12 + [(50257, 768)]
    weights = [tf.Variable(rng.standard_normal(s, dtype=np.float32)) for s in shapes]
    rows = {768: tf.ones((1, 768)), 3072: tf.ones((1, 3072))}
    dots = tf.function(lambda: tf.add_n([tf.reduce_sum(tf.matmul(rows[w.shape[1]], w,
                                                                  transpose_b=True))
                                         for w in weights]), jit_compile=True)
    array = np.ones(2**28, np.float32)
    out = {}
    for name, fn, nbytes in (("xla reduce 1 GiB", lambda: reduce().numpy(), 2**30),
                             ("numpy sum 1 GiB", array.sum, 2**30),
                             ("xla 49 one-row products", lambda: dots().numpy(),
                              sum(4 * a * b for a, b in shapes))):
        fn()
        best = min(_timed(fn) for _ in range(5))
        out[name] = nbytes / best / 1e9
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def kzoo_speed(repeats: int) -> dict:
    import numpy as np

    from kzoo.generation import Generator, quantize_for_generation
    from kzoo.models import CausalLM

    model = CausalLM(**GPT2)
    variants = {
        "kzoo reference float32": dict(weights="reference"),
        "kzoo float32": dict(weights=None),
        "kzoo bfloat16": dict(weights=quantize_for_generation(model, "bfloat16")),
        "kzoo bfloat16 (no XLA)": dict(jit_compile=False, weights=None),
        "kzoo int8": dict(weights=quantize_for_generation(model, "int8")),
    }
    variants["kzoo bfloat16 (no XLA)"]["weights"] = variants["kzoo bfloat16"]["weights"]
    nbytes = {"kzoo reference float32": quantize_for_generation(model, "float32").nbytes()}
    nbytes["kzoo float32"] = nbytes["kzoo reference float32"]
    for name in ("kzoo bfloat16", "kzoo bfloat16 (no XLA)", "kzoo int8"):
        nbytes[name] = variants[name]["weights"].nbytes()
    generators = {name: Generator(model, **kw) for name, kw in variants.items()}
    out = {}
    for batch in (1, 8):
        ids = np.random.default_rng(batch).integers(0, GPT2["vocab_size"], (batch, PROMPT))
        prompts = ids.tolist()
        tokens = {}
        for gen in generators.values():  # same bucket as 128: compiles the program
            gen.generate(prompts, max_new_tokens=65)
        best = dict.fromkeys(generators, float("inf"))
        for _ in range(repeats):
            for name, gen in generators.items():
                start = time.perf_counter()
                tokens[name] = gen.generate(prompts, max_new_tokens=NEW).token_ids
                best[name] = min(best[name], time.perf_counter() - start)
        for name in generators:
            out[(name, batch)] = {"seconds": best[name], "bytes": nbytes[name],
                                  "tokens": tokens[name], "prompts": prompts}
        print(f"done kzoo batch {batch}", flush=True)
    return out


def transformers_child() -> dict:
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = transformers.GPT2Config(bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    out = {}
    for batch in (1, 8):
        ids = torch.tensor(np.random.default_rng(batch).integers(0, 50257, (batch, PROMPT)))

        def run(n, ids=ids):
            with torch.no_grad():
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               pad_token_id=0)

        run(8)  # warm-up
        out[batch] = min(_timed(lambda: run(NEW)) for _ in range(1 if batch == 8 else 2))
    return out


def quality(steps: int) -> list[dict]:
    import keras
    import numpy as np

    from kzoo.generation import Generator, quantize_for_generation
    from kzoo.generation.decoders import prepared_logits
    from kzoo.models import CausalLM

    root = Path(os.environ.get("KZOO_TEST_DATA", Path(__file__).parents[2] / "shared/data"))
    text = (root / "tinyshakespeare.txt").read_bytes()
    ids = np.frombuffer(text, np.uint8).astype("int32")  # bytes: a char tokenizer for ASCII
    split = int(0.9 * ids.size)
    train, valid = ids[:split], ids[split:]
    keras.utils.set_random_seed(0)
    model = CausalLM.from_preset("gpt_nano", vocab_size=256, max_sequence_length=512)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    rng = np.random.default_rng(0)
    starts = rng.integers(0, train.size - 129, size=steps * 32)
    windows = train[starts[:, None] + np.arange(129)]
    model.fit(windows[:, :-1], windows[:, 1:], batch_size=32, epochs=1, verbose=0)
    prompts = [valid[s:s + 16].tolist() for s in (0, 20_000, 40_000, 60_000)]
    evals = valid[rng.integers(0, valid.size - 129, size=32)[:, None] + np.arange(129)]
    rows, base = [], None
    for mode in ("float32", "bfloat16", "int8"):
        weights = quantize_for_generation(model, mode)
        tokens = np.array(Generator(model, weights=weights).generate(
            prompts, max_new_tokens=256).token_ids)
        base = tokens if base is None else base
        logits = np.asarray(prepared_logits(model, evals[:, :-1], weights), np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp, evals[:, 1:, None], -1).mean()
        rows.append({"mode": mode, "same tokens": float((tokens == base).mean()),
                     "valid perplexity": float(np.exp(nll))})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(transformers_child()))
        return
    import numpy as np

    start = time.time()
    bw = bandwidth()
    print("bandwidth GB/s:", {k: round(v, 1) for k, v in bw.items()}, flush=True)
    ceiling_bw = max(bw.values())
    kzoo = kzoo_speed(args.repeats)
    done = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise SystemExit(f"transformers failed:\n{done.stderr[-3000:]}")
    hf = {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    print("done transformers", flush=True)
    rows = [{"row": f"bandwidth: {k}", "batch": "", "tokens/s": "", "MB/token": "",
             "of ceiling": "", "vs kzoo float32": "", "vs transformers": "",
             "GB/s": round(v, 1)} for k, v in bw.items()]
    for batch in (1, 8):
        f32 = kzoo[("kzoo float32", batch)]["seconds"]
        ref_tokens = kzoo[("kzoo reference float32", batch)]["tokens"]
        for (name, b), m in kzoo.items():
            if b != batch:
                continue
            rate = batch * NEW / m["seconds"]
            steps = NEW / m["seconds"]  # decode steps per second: each reads all weights once
            rows.append({"row": name, "batch": batch, "tokens/s": round(rate, 1),
                         "MB/token": round(m["bytes"] / 1e6 / (batch if batch > 1 else 1), 1),
                         "of ceiling": round(steps * m["bytes"] / 1e9 / ceiling_bw, 2),
                         "vs kzoo float32": round(f32 / m["seconds"], 2),
                         "vs transformers": round(hf[batch] / m["seconds"], 2),
                         "GB/s": round(steps * m["bytes"] / 1e9, 1),
                         "same tokens as reference": float(
                             np.mean(np.array(m["tokens"]) == np.array(ref_tokens)))})
        rows.append({"row": "transformers float32", "batch": batch,
                     "tokens/s": round(batch * NEW / hf[batch], 1), "MB/token": "",
                     "of ceiling": "", "vs kzoo float32": round(f32 / hf[batch], 2),
                     "vs transformers": 1.0, "GB/s": ""})
    quality_rows = quality(args.train_steps)
    for q in quality_rows:
        rows.append({"row": f"trained gpt_nano char, {q['mode']}", "batch": 4,
                     "same tokens as float32 (256 new)": round(q["same tokens"], 3),
                     "valid perplexity": round(q["valid perplexity"], 3)})
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    rows = [{k: row.get(k, "") for k in keys} for row in rows]
    settings = {"shape": GPT2, "prompt": PROMPT, "new_tokens": NEW, "repeats": args.repeats,
                "train_steps": args.train_steps, "torch_threads": 2,
                "ceiling_bandwidth_gb_s": ceiling_bw,
                "of_ceiling": "decode steps/s x weight bytes / best measured bandwidth",
                "wall_seconds": round(time.time() - start, 1)}
    report("generate_dtypes", rows, settings)


if __name__ == "__main__":
    main()
