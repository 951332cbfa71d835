"""Qwen3 and Gemma 3 greedy generation: kzoo (JAX, TensorFlow) vs transformers' `generate`.

One random-weight model per shape (the `gemma3_270m` and `qwen3_0_6b` presets, float32) is
written once with `save_hf`; every run reads that folder, so kzoo (`CausalLM.from_hf`, then
`kzoo.generation.Generator`, greedy) and transformers (`AutoModelForCausalLM.from_pretrained`,
`generate(do_sample=False)`, its default attention) compute the same model. Each backend runs
in its own process, one after another (no two share the CPU). Prompts: random ids, all of one
length, batch 1 and 8; every row writes all `--new` tokens (no end token). Each row is timed
after one warm-up call (compilation excluded; "first call s" includes it), best of
`--repeats`. "same tokens" is the share of generated tokens equal to transformers' (random
weights give near-ties, so a late flip is possible; a broken model gives ~0).

Run (a quiet machine; ~4 GB of memory at the 0.6B shape):
    python benchmarks/families_generate.py
Smoke (the nano presets, seconds):
    python benchmarks/families_generate.py --presets gemma3_nano qwen3_nano --new 8 --repeats 1
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import best_of, report, run_child

PRESETS = ("gemma3_270m", "qwen3_0_6b")


def _prompts(batch, length, vocab):
    import numpy as np

    return np.random.default_rng(batch).integers(1, vocab, (batch, length)).astype("int64")


def _kzoo(folder, batches, prompt, new, repeats):
    from kzoo.generation import Generator
    from kzoo.models import CausalLM

    model = CausalLM.from_hf(folder)
    out = {}
    for batch in batches:
        ids = _prompts(batch, prompt, model.vocab_size).tolist()
        generator = Generator(model, "greedy")
        start = time.perf_counter()
        tokens = generator.generate(ids, max_new_tokens=new).token_ids
        first = time.perf_counter() - start
        assert all(len(t) == new for t in tokens), "a row stopped early"
        seconds = best_of(lambda g=generator, i=ids: g.generate(i, max_new_tokens=new), repeats)
        out[batch] = {"tok/s": batch * new / seconds, "first": first, "tokens": tokens}
    return out


def _transformers(folder, batches, prompt, new, repeats):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = {}
    for batch in batches:
        ids = torch.tensor(_prompts(batch, prompt, model.config.vocab_size))

        def run(ids=ids):
            with torch.inference_mode():
                return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=new, min_new_tokens=new,
                                      eos_token_id=None, pad_token_id=0)

        start = time.perf_counter()
        tokens = run()[:, prompt:].tolist()
        first = time.perf_counter() - start
        seconds = best_of(run, repeats)
        out[batch] = {"tok/s": batch * new / seconds, "first": first, "tokens": tokens,
                      "attention": model.config._attn_implementation}
    return out


def _save(preset, folder, context):
    import keras

    from kzoo.models import CausalLM

    keras.utils.set_random_seed(0)
    model = CausalLM.from_preset(preset, max_sequence_length=context, dropout=0.0)
    model.save_hf(folder)
    return model.count_params()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # (kind, folder)
    args = parser.parse_args()
    if args.child:
        kind, folder = args.child
        run = _transformers if kind == "transformers" else _kzoo
        result = run(folder, args.batches, args.prompt, args.new, args.repeats)
        print("RESULT " + json.dumps({str(b): r for b, r in result.items()}))
        return
    common = ["--batches", *args.batches, "--prompt", args.prompt, "--new", args.new,
              "--repeats", args.repeats]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            folder = Path(tmp) / preset
            # a context just above what is generated: the RoPE tables, not the speed, grow
            # with it (Gemma's 512-token window never binds at these lengths, as in transformers)
            params = _save(preset, folder, max(256, args.prompt + args.new))
            runs = {}
            for kind in ["transformers", *args.backends]:
                backend = "torch" if kind == "transformers" else kind
                result, stderr = run_child(__file__, [*common, "--child", kind, folder], backend)
                if result is None:
                    raise SystemExit(f"{preset} {kind} failed:\n{stderr[-3000:]}")
                runs[kind] = result
            for batch in map(str, args.batches):
                reference = runs["transformers"][batch]
                for kind, result in runs.items():
                    r = result[batch]
                    same = [a == b for x, y in zip(r["tokens"], reference["tokens"])
                            for a, b in zip(x, y)]
                    name = (f"transformers ({r['attention']})" if kind == "transformers"
                            else f"kzoo ({kind})")
                    rows.append({"shape": preset, "params": params, "batch": int(batch),
                                 "runner": name, "tok/s": round(r["tok/s"], 1),
                                 "vs transformers": round(r["tok/s"] / reference["tok/s"], 2),
                                 "first call s": round(r["first"], 2),
                                 "same tokens": round(sum(same) / len(same), 3)})
    report("families_generate", rows, {k: v for k, v in vars(args).items() if k != "child"})


if __name__ == "__main__":
    main()
