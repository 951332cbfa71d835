"""PyTorch decoding: the traced model step against the untraced one, with JAX beside them.

On PyTorch `Generator` runs its decode loop eagerly and each one-token model step as a graph
traced once per bucket (`kzoo.backend.compile_step`); `jit_compile=False` runs the step's Python
every token. Both are measured in one process, alternating, with PyTorch's default threads and
with one; JAX's compiled loop runs in a child process on the same shapes. Greedy, every row runs
all its new tokens. "first call" is the first `generate` of a bucket (tracing included).

Run: `python benchmarks/torch_decode.py [--repeats 3]`
"""

import argparse
import json
import time

from _common import report, run_child

SHAPES = {"baby": ("gpt_baby", 256, 8, 16, 64), "124m": ("gpt2_124m", 50257, 1, 16, 32)}


def _measure(backend_kind, repeats):
    """{shape: {variant: (tokens/s, first call s)}} on the current backend."""
    import keras
    import numpy as np

    from kzoo.generation import Generator
    from kzoo.models import CausalLM

    out = {}
    for label, (preset, vocab, batch, prompt, new) in SHAPES.items():
        keras.utils.set_random_seed(0)
        model = CausalLM.from_preset(preset, vocab_size=vocab, dropout=0.0)
        ids = np.random.default_rng(1).integers(1, vocab, (batch, prompt)).astype("int32")
        variants = {"compiled": Generator(model, "greedy")}
        if backend_kind == "torch":
            variants["untraced step"] = Generator(model, "greedy", jit_compile=False)
        first, best = {}, {}
        for name, generator in variants.items():
            start = time.perf_counter()
            generator.generate(ids, max_new_tokens=new)
            first[name] = time.perf_counter() - start
        for _ in range(repeats):  # alternating, so a change of load hits every variant
            for name, generator in variants.items():
                start = time.perf_counter()
                generator.generate(ids, max_new_tokens=new)
                seconds = time.perf_counter() - start
                best[name] = min(best.get(name, float("inf")), seconds)
        out[label] = {name: (batch * new / best[name], first[name]) for name in variants}
    return out


def _child(backend, repeats, threads=None):
    env = {"OMP_NUM_THREADS": str(threads)} if threads else None
    result, stderr = run_child(__file__, ["--child", backend, "--repeats", repeats], backend, env)
    if result is None:
        raise SystemExit(f"{backend} child failed:\n{stderr[-3000:]}")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_measure(args.child, args.repeats)))
        return
    runs = {"torch": _child("torch", args.repeats), "torch, 1 thread": _child(
        "torch", args.repeats, threads=1), "jax": _child("jax", args.repeats)}
    rows = []
    for label in SHAPES:
        for run, result in runs.items():
            for name, (tokens_per_s, first) in result[label].items():
                rows.append({"shape": label, "backend": run, "step": name,
                             "tok/s": round(tokens_per_s), "first call s": round(first, 2)})
    report("torch_decode", rows, {**vars(args), "shapes": SHAPES})


if __name__ == "__main__":
    main()
