"""kzoo on each Keras backend, side by side: training, generation and the DPO step.

One child process per backend (TensorFlow, JAX, PyTorch) measures, on the same shapes:
- training tokens/s of a `fit` step (AdamW) on the gpt_baby and gpt_mini configs, with
  nanoGPT's PyTorch reference (benchmarks/reference/nanogpt.py, eager) on the same batch;
- greedy generation tokens/s at the baby and GPT-2 124M shapes, kzoo's `Generator` vs
  keras-hub's `GPT2CausalLM.generate` on the same backend (same prompts, every row runs all
  its new tokens);
- a DPO step (frozen reference copy) against a pre-training step on the same tokens.
Trained the recipes' way: XLA on TensorFlow, jax.jit on JAX, kzoo's recorded train step on
PyTorch (`kzoo.backend.compile_train_step`).

Run: `python benchmarks/backends.py [--quick] [--backends tensorflow,jax,torch]`
"""

import argparse
import json
import sys
import time
from pathlib import Path

from _common import best_of, cpu_name, report, run_child

HERE = Path(__file__).resolve().parent
TRAIN = {"gpt_baby": (12, 64), "gpt_mini": (8, 128)}  # preset: (batch, seq)
GENERATE = {"baby": ("gpt_baby", 256, 8, 16, 64), "124m": ("gpt2_124m", 50257, 1, 16, 32)}


def _compile(model, **compile_args):
    """What the recipes compile with (`train.jit_compile: true`): XLA on TensorFlow and JAX,
    kzoo's recorded train step on PyTorch (benchmarks/torch_compile.py compares it to eager)."""
    from kzoo.training.recipe import compile_for_backend

    compile_for_backend(model, True, **compile_args)


def _train_tokens_per_s(preset, batch, seq, steps, repeats):
    import keras
    import numpy as np

    from kzoo.models import CausalLM

    keras.utils.set_random_seed(0)
    model = CausalLM.from_preset(preset, vocab_size=65, max_sequence_length=256, dropout=0.0)
    _compile(model, optimizer=keras.optimizers.AdamW(1e-3),
             loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = np.random.default_rng(0).integers(0, 65, (batch * steps, seq + 1)).astype("int32")
    x, y = ids[:, :-1], ids[:, 1:]
    model.fit(x[:batch], y[:batch], batch_size=batch, verbose=0)  # compile
    seconds = best_of(lambda: model.fit(x, y, batch_size=batch, verbose=0), repeats) / steps
    return batch * seq / seconds


def _generate_tokens_per_s(preset, vocab, batch, prompt, new, repeats):
    import keras
    import keras_hub
    import numpy as np

    from kzoo.generation import Generator
    from kzoo.models import CausalLM, get_preset

    p = get_preset(preset)
    keras.utils.set_random_seed(0)
    ours = CausalLM.from_preset(preset, vocab_size=vocab, dropout=0.0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocab, num_layers=p["num_layers"], num_heads=p["num_heads"],
        hidden_dim=p["hidden_dim"], intermediate_dim=p["intermediate_dim"], dropout=0.0,
        max_sequence_length=p["max_sequence_length"])
    hub = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    hub.compile(sampler="greedy")
    ids = np.random.default_rng(1).integers(1, vocab, (batch, prompt)).astype("int32")
    generator = Generator(ours, "greedy")
    # No stop token: every row runs all `new` tokens, as keras-hub's loop does here.
    run_ours = lambda: generator.generate(ids, max_new_tokens=new)  # noqa: E731
    token_ids = np.zeros((batch, prompt + new), "int32")
    token_ids[:, :prompt] = ids
    inputs = {"token_ids": token_ids, "padding_mask": token_ids > 0}
    run_hub = lambda: hub.generate(inputs, stop_token_ids=None)  # noqa: E731
    out = {}
    for name, run in (("kzoo", run_ours), ("keras_hub", run_hub)):
        run()  # compile
        out[name] = batch * new / best_of(run, repeats)
    return out


def _dpo_ratio(steps, repeats, pairs=8, length=128):
    import keras
    import numpy as np

    from kzoo.alignment.dpo import DPOModel, frozen_copy
    from kzoo.models import CausalLM

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 65, (pairs, 2, length)).astype("int32")
    mask = np.zeros((pairs, 2, length), "float32")
    mask[:, :, length // 2:] = 1.0
    flat = ids.reshape(2 * pairs, length)

    def model():
        keras.utils.set_random_seed(0)
        return CausalLM.from_preset("gpt_baby", vocab_size=65, max_sequence_length=length,
                                    dropout=0.0)

    pretrain = model()
    _compile(pretrain, optimizer=keras.optimizers.Adam(1e-4),
             loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    policy = model()
    dpo = DPOModel(policy, frozen_copy(policy))
    _compile(dpo, optimizer=keras.optimizers.Adam(1e-4))
    batch = {"token_ids": ids, "loss_mask": mask}
    runs = {"pretrain": lambda: pretrain.train_on_batch(flat[:, :-1], flat[:, 1:]),
            "dpo": lambda: dpo.train_on_batch(batch)}
    times = {}
    for step in runs.values():
        step()  # compile
    for _ in range(repeats):  # interleaved, so a change of load hits both
        for name, step in runs.items():
            t = best_of(lambda s=step: [s() for _ in range(steps)], 1) / steps
            times[name] = min(times.get(name, float("inf")), t)
    return times


def child(args) -> dict:
    import keras

    out = {"backend": keras.backend.backend()}
    for preset, (batch, seq) in TRAIN.items():
        out[f"train {preset}"] = _train_tokens_per_s(preset, batch, seq, args.steps, args.repeats)
    for label, (preset, vocab, batch, prompt, new) in GENERATE.items():
        if label == "124m" and args.quick:
            continue
        for name, value in _generate_tokens_per_s(preset, vocab, batch, prompt, new,
                                                  args.repeats).items():
            out[f"generate {label} {name}"] = value
    times = _dpo_ratio(args.steps, args.repeats)
    out["pretrain step ms"], out["dpo step ms"] = 1000 * times["pretrain"], 1000 * times["dpo"]
    return out


def nanogpt(args) -> dict:
    """nanoGPT's eager PyTorch train step (AdamW) on the same batches."""
    import torch

    sys.path.insert(0, str(HERE / "reference"))
    from nanogpt import GPT

    from kzoo.models import get_preset

    torch.manual_seed(0)
    out = {"backend": "nanoGPT (PyTorch)"}
    for preset, (batch, seq) in TRAIN.items():
        p = get_preset(preset)
        model = GPT(65, 256, p["num_layers"], p["num_heads"], p["hidden_dim"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.randint(0, 65, (batch, seq + 1))

        def step(model=model, ids=ids, optimizer=optimizer):
            loss = model(ids[:, :-1].contiguous(), ids[:, 1:].contiguous())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()
        seconds = best_of(lambda: [step() for _ in range(args.steps)], args.repeats) / args.steps
        out[f"train {preset}"] = batch * seq / seconds
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small run, no 124M shape")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 3, 1
    if args.child:
        result = nanogpt(args) if args.child == "nanogpt" else child(args)
        print("RESULT " + json.dumps(result))
        return
    results = []
    for backend in [*args.backends.split(","), "nanogpt"]:
        start = time.time()
        result, stderr = run_child(__file__, ["--child", backend, "--steps", args.steps,
                                              "--repeats", args.repeats]
                                   + (["--quick"] if args.quick else []),
                                   "torch" if backend == "nanogpt" else backend)
        if result is None:
            print(f"{backend}: failed\n{stderr[-3000:]}", file=sys.stderr)
            continue
        results.append({**result, "child seconds": time.time() - start})
    rows = []
    for r in results:
        row = {"backend": r["backend"]}
        for preset in TRAIN:
            row[f"train {preset} tok/s"] = round(r[f"train {preset}"])
        for label in GENERATE:
            for name in ("kzoo", "keras_hub"):
                if f"generate {label} {name}" in r:
                    row[f"gen {label} {name} tok/s"] = round(r[f"generate {label} {name}"])
        if "dpo step ms" in r:
            row["DPO / pretrain step"] = round(r["dpo step ms"] / r["pretrain step ms"], 2)
        rows.append(row)
    report("backends", rows, {**vars(args), "train": TRAIN, "generate": GENERATE,
                              "cpu": cpu_name()})


if __name__ == "__main__":
    main()
