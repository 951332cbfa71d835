"""Forward and train-step speed: kzoo `gpt` vs keras_hub GPT2CausalLM on the same config.

Also times kzoo's two attention paths (grouped einsum vs `keras.ops.dot_product_attention`)
and XLA on/off, which is how `attention_impl="auto"` was chosen for the TensorFlow backend.

Run: `python benchmarks/model_speed.py [--preset gpt_baby] [--batch 12] [--seq 64]`
"""

import argparse

from _common import best_of, report


def _kzoo(preset, vocab, seq, impl):
    from kzoo.models import CausalLM

    return CausalLM.from_preset(
        preset, vocab_size=vocab, max_sequence_length=max(seq, 64), attention_impl=impl
    )


def _keras_hub(preset, vocab, seq):
    import keras_hub

    from kzoo.models import get_preset

    p = get_preset(preset)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocab, num_layers=p["num_layers"], num_heads=p["num_heads"],
        hidden_dim=p["hidden_dim"], intermediate_dim=p["intermediate_dim"], dropout=0.0,
        max_sequence_length=max(seq, 64),
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def measure(model, x, y, jit, steps):
    import keras
    import numpy as np
    import tensorflow as tf

    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit,
    )
    batch = len(y)
    tokens = int(np.prod(y.shape))
    forward = tf.function(lambda a: model(a, training=False), jit_compile=jit)
    forward(x)  # trace and compile
    forward_s = best_of(lambda: [forward(x) for _ in range(steps)][-1].numpy()) / steps
    xs = {k: np.concatenate([v] * steps) for k, v in x.items()} if isinstance(x, dict) else (
        np.concatenate([x] * steps))
    ys = np.concatenate([y] * steps)
    model.fit(x, y, batch_size=batch, verbose=0)  # trace and compile
    train_s = best_of(lambda: model.fit(xs, ys, batch_size=batch, verbose=0)) / steps
    return tokens / forward_s, tokens / train_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt_baby")
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, size=(args.batch, args.seq + 1)).astype("int32")
    x, y = ids[:, :-1], ids[:, 1:]
    mask = np.ones_like(x)
    llama = args.preset.replace("gpt", "llama")
    rows = []
    for name, build, inputs, jit in [
        ("keras_hub GPT2CausalLM", lambda: _keras_hub(args.preset, args.vocab, args.seq),
         {"token_ids": x, "padding_mask": mask}, False),
        ("keras_hub GPT2CausalLM", lambda: _keras_hub(args.preset, args.vocab, args.seq),
         {"token_ids": x, "padding_mask": mask}, True),
        ("kzoo gpt, einsum", lambda: _kzoo(args.preset, args.vocab, args.seq, "einsum"), x, False),
        ("kzoo gpt, einsum", lambda: _kzoo(args.preset, args.vocab, args.seq, "einsum"), x, True),
        ("kzoo gpt, fused", lambda: _kzoo(args.preset, args.vocab, args.seq, "fused"), x, False),
        ("kzoo gpt, fused", lambda: _kzoo(args.preset, args.vocab, args.seq, "fused"), x, True),
        ("kzoo llama, einsum", lambda: _kzoo(llama, args.vocab, args.seq, "einsum"), x, True),
        ("kzoo llama, fused", lambda: _kzoo(llama, args.vocab, args.seq, "fused"), x, True),
    ]:
        fwd, train = measure(build(), inputs, y, jit, args.steps)
        rows.append({"model": name, "xla": jit, "forward tokens/s": fwd,
                     "train tokens/s": train})
        print(rows[-1], flush=True)
    base = rows[1]["train tokens/s"]
    for row in rows:
        row["train vs keras_hub (xla)"] = f"{row['train tokens/s'] / base:.2f}x"
    report("model_speed", rows, vars(args))


if __name__ == "__main__":
    main()
