"""Generation speed: kzoo's KV-cached decoding vs keras_hub and an uncached nanoGPT-style loop.

All three decode greedily (same work per token, no early stop) from a random-weight model of
the same shape: kzoo `CausalLM` for kzoo and the nanoGPT loop, keras_hub `GPT2CausalLM` built
with the same vocabulary, layers, heads, widths and positions. Each row is timed after one
warm-up call (compilation excluded), best of `--repeats`.

- kzoo (XLA) / kzoo (graph): `kzoo.generation.Generator`, `jit_compile=True` / `False`.
- keras_hub: `GPT2CausalLM.generate` on a (batch, prompt + new) array with a padding mask,
  so it writes exactly `new` tokens, sampler "greedy", its default XLA compilation.
- nanoGPT loop: each step runs the full forward pass over the whole sequence so far (a
  `tf.function` with a dynamic length axis) and appends the argmax, as nanoGPT's `generate`.

Run: `python benchmarks/generate_speed.py` (baby config, batch 1 and 8, 256 new tokens, then a
GPT-2-124M shape at batch 1 with 128 new tokens). `--quick` runs a small smoke version.
"""

import argparse
import time

from _common import best_of, report


def build_models(shape: dict):
    import keras_hub

    from kzoo.models import CausalLM

    kzoo_model = CausalLM(**shape)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=shape["vocab_size"], num_layers=shape["num_layers"],
        num_heads=shape["num_heads"], hidden_dim=shape["hidden_dim"],
        intermediate_dim=shape["intermediate_dim"],
        max_sequence_length=shape["max_sequence_length"],
    )
    hub_model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    hub_model.compile(sampler="greedy")
    return kzoo_model, hub_model


def prompts(batch: int, length: int, vocab: int):
    import numpy as np

    return np.random.default_rng(0).integers(1, vocab, size=(batch, length)).astype("int32")


def time_kzoo(model, ids, new_tokens, jit_compile, repeats):
    from kzoo.generation import Generator

    generator = Generator(model, "greedy", jit_compile=jit_compile)

    def run():
        result = generator.generate(ids.tolist(), max_new_tokens=new_tokens)
        assert all(len(t) == new_tokens for t in result.token_ids)

    run()  # compile
    return best_of(run, repeats)


def time_keras_hub(model, ids, new_tokens, repeats):
    import numpy as np

    batch, length = ids.shape
    token_ids = np.zeros((batch, length + new_tokens), "int32")
    token_ids[:, :length] = ids
    mask = np.zeros_like(token_ids, bool)
    mask[:, :length] = True
    inputs = {"token_ids": token_ids, "padding_mask": mask}

    def run():
        out = model.generate(inputs, stop_token_ids=None)
        assert out["token_ids"].shape == (batch, length + new_tokens)

    run()  # compile
    return best_of(run, repeats)


def time_nanogpt_loop(model, ids, new_tokens, repeats):
    import tensorflow as tf

    context = model.max_sequence_length

    @tf.function(input_signature=[tf.TensorSpec((ids.shape[0], None), tf.int32)])
    def next_token(seq):
        logits = model(seq[:, -context:])  # (batch, seq, vocab): the whole sequence again
        return tf.argmax(logits[:, -1, :], axis=-1, output_type=tf.int32)

    def run():
        seq = tf.constant(ids)
        for _ in range(new_tokens):
            seq = tf.concat([seq, next_token(seq)[:, None]], axis=1)
        assert seq.shape[1] == ids.shape[1] + new_tokens

    next_token(tf.constant(ids))  # trace
    return best_of(run, repeats)


def bench(label: str, shape: dict, batches, prompt_len, new_tokens, repeats, nanogpt=True):
    kzoo_model, hub_model = build_models(shape)
    rows = []
    for batch in batches:
        ids = prompts(batch, prompt_len, shape["vocab_size"])
        tokens = batch * new_tokens
        timings = {
            "kzoo (XLA)": time_kzoo(kzoo_model, ids, new_tokens, True, repeats),
            "kzoo (graph)": time_kzoo(kzoo_model, ids, new_tokens, False, repeats),
            "keras_hub": time_keras_hub(hub_model, ids, new_tokens, repeats),
        }
        if nanogpt:
            timings["nanoGPT loop"] = time_nanogpt_loop(kzoo_model, ids, new_tokens, repeats)
        best_kzoo = min(timings["kzoo (XLA)"], timings["kzoo (graph)"])
        for name, seconds in timings.items():
            rows.append({
                "model": label, "batch": batch, "new tokens": new_tokens, "method": name,
                "seconds": round(seconds, 4), "tokens/s": tokens / seconds,
                "best kzoo speed-up": seconds / best_kzoo,
            })
        print(f"done: {label} batch {batch}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=256, help="baby config vocabulary")
    parser.add_argument("--skip-124m", action="store_true")
    args = parser.parse_args()

    baby = dict(vocab_size=args.vocab_size, num_layers=4, num_heads=4, hidden_dim=128,
                intermediate_dim=512, max_sequence_length=512)
    gpt2 = dict(vocab_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
                intermediate_dim=3072, max_sequence_length=1024)
    start = time.time()
    if args.quick:
        small = dict(baby, num_layers=2, hidden_dim=64, intermediate_dim=256,
                     max_sequence_length=128)
        rows = bench("quick", small, [1], 8, 32, 1)
        settings = {"quick": True, "shape": small}
    else:
        rows = bench("baby", baby, [1, 8], args.prompt_len, 256, args.repeats)
        settings = {"baby": baby, "prompt_len": args.prompt_len, "repeats": args.repeats}
        if not args.skip_124m:
            rows += bench("gpt2-124m", gpt2, [1], args.prompt_len, 128, 1, nanogpt=False)
            settings["gpt2_124m"] = gpt2
    settings["wall_seconds"] = round(time.time() - start, 1)
    report("generate_speed" + ("_quick" if args.quick else ""), rows, settings)


if __name__ == "__main__":
    main()
