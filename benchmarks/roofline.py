"""Matmul ceiling of one training step: how fast could the baby config train on this CPU?

A training step of a GPT is mostly matrix products: for every dense layer one in the
forward pass and two in the backward pass (the gradient of the input and of the kernel),
plus the attention products. This script lists every product of one step of the baby
Shakespeare config (4 layers, 4 heads, 128 dims, block 64, batch 12), times each shape on
its own under XLA, and adds the times up. That sum is a floor on the step time (norms,
GELU, softmax, the loss and AdamW come on top), so `tokens / sum` is a ceiling on training
tokens/s that no implementation of the same model reaches on this machine. Then it trains
kzoo gpt and keras_hub GPT2CausalLM for a few hundred steps in the same run, for reference.

    python benchmarks/roofline.py [--batch 12] [--seq 64] [--steps 300]

Writes benchmarks/results/roofline.json and prints a markdown table.
"""

import argparse
import time

from _common import report


def step_products(batch, seq, dim, heads, layers, ffn, vocab):
    """(name, count, (m, k, n), batched) for every matmul of one train step."""
    tokens = batch * seq
    dense = {"qkv": (dim, 3 * dim), "attention out": (dim, dim), "mlp up": (dim, ffn),
             "mlp down": (ffn, dim)}
    products = []
    for name, (k, n) in dense.items():
        products += [(f"{name} forward", layers, (tokens, k, n), 1),
                     (f"{name} input grad", layers, (tokens, n, k), 1),
                     (f"{name} kernel grad", layers, (k, tokens, n), 1)]
    products += [("lm head forward", 1, (tokens, dim, vocab), 1),
                 ("lm head input grad", 1, (tokens, vocab, dim), 1),
                 ("lm head kernel grad", 1, (dim, tokens, vocab), 1)]
    hd, bh = dim // heads, batch * heads
    # (batch * heads, seq, head_dim) x (batch * heads, head_dim, seq): scores, then probs x V;
    # each has two gradient products of the same size.
    products += [("attention scores, fwd+bwd", 3 * layers, (seq, hd, seq), bh),
                 ("attention probs x values, fwd+bwd", 3 * layers, (seq, seq, hd), bh)]
    return products


def time_product(m, k, n, batched, repeats=20):
    """Seconds per (batched) matmul of (m, k) x (k, n) under XLA, best of 15 calls of 20."""
    import tensorflow as tf

    a = tf.random.normal((repeats, batched, m, k))
    b = tf.random.normal((batched, k, n))

    @tf.function(jit_compile=True)
    def run(a, b):
        return [tf.matmul(a[i], b) for i in range(repeats)]  # independent products

    run(a, b)
    best = float("inf")
    for _ in range(15):
        start = time.perf_counter()
        [t.numpy() for t in run(a, b)[-1:]]
        best = min(best, time.perf_counter() - start)
    return best / repeats


def train_tokens_per_s(model, inputs, y, steps):
    import keras

    model.compile(optimizer=keras.optimizers.AdamW(1e-3, global_clipnorm=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    model.fit(inputs[:24] if not isinstance(inputs, dict) else
              {k: v[:24] for k, v in inputs.items()}, y[:24], batch_size=12, verbose=0)
    start = time.perf_counter()
    model.fit(inputs, y, batch_size=12, verbose=0)
    return y.size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=67)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    import numpy as np

    dim, heads, layers, ffn = 128, 4, 4, 512
    rows, total_s, total_flops = [], 0.0, 0
    for name, count, (m, k, n), batched in step_products(
        args.batch, args.seq, dim, heads, layers, ffn, args.vocab
    ):
        seconds = time_product(m, k, n, batched)
        flops = 2 * m * k * n * batched
        total_s += count * seconds
        total_flops += count * flops
        rows.append({"product": name, "m x k x n": f"{m}x{k}x{n}" + (
            f" (x{batched})" if batched > 1 else ""), "per step": count,
            "GFLOP/s": flops / seconds / 1e9})
        print(rows[-1], flush=True)
    tokens = args.batch * args.seq
    ceiling = tokens / total_s
    rows.append({"product": "all products of one step", "m x k x n": "-",
                 "per step": sum(r["per step"] for r in rows),
                 "GFLOP/s": total_flops / total_s / 1e9})

    from model_speed import _keras_hub, _kzoo

    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, size=(args.batch * args.steps, args.seq + 1))
    x, y = ids[:, :-1].astype("int32"), ids[:, 1:].astype("int32")
    measured = {
        "kzoo gpt": train_tokens_per_s(_kzoo("gpt_baby", args.vocab, args.seq, "auto"), x, y,
                                       args.steps),
        "keras_hub GPT2CausalLM": train_tokens_per_s(
            _keras_hub("gpt_baby", args.vocab, args.seq),
            {"token_ids": x, "padding_mask": np.ones_like(x)}, y, args.steps),
    }
    print(f"\nmatmul floor: {total_s * 1e3:.1f} ms/step, {total_flops / 1e9:.2f} GFLOP/step -> "
          f"ceiling {ceiling:,.0f} tokens/s")
    for name, value in measured.items():
        print(f"{name}: {value:,.0f} tokens/s = {value / ceiling:.0%} of the ceiling")
        rows.append({"product": f"measured: {name} train step", "m x k x n": "-",
                     "per step": "-", "GFLOP/s": total_flops / (tokens / value) / 1e9})
    report("roofline", rows, {**vars(args), "ceiling_tokens_per_s": ceiling,
                              "floor_ms_per_step": total_s * 1e3,
                              "gflop_per_step": total_flops / 1e9,
                              "measured_tokens_per_s": measured})


if __name__ == "__main__":
    main()
