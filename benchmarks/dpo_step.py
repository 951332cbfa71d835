"""DPO train step vs pre-training train step on the same number of tokens, side by side.

A DPO step on B pairs runs the policy forward and backward on 2B rows and (with a frozen
reference) the reference forward on the same 2B rows; the pre-training step runs 2B rows of the
same length forward and backward. Target: DPO <= 3x the pre-training step. The precomputed-
reference mode (no second model) is timed too. All use `train_on_batch` (compiled train
functions, Adam, same jit setting); the modes are timed interleaved and each keeps its fastest
of `--repeats` timings, so a change of machine load affects them alike.

Run: `python benchmarks/dpo_step.py [--preset gpt_baby] [--pairs 8] [--seq 256] [--jit]`
"""

import argparse

from _common import best_of, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt_baby")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per DPO step (rows = 2x)")
    parser.add_argument("--seq", type=int, default=256, help="tokens per row")
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings; the best is kept")
    parser.add_argument("--jit", action="store_true", help="compile with XLA")
    args = parser.parse_args()

    import keras
    import numpy as np

    from kzoo.alignment.dpo import DPOModel, compute_reference_logps, frozen_copy
    from kzoo.models import CausalLM

    rng = np.random.default_rng(0)
    vocab, rows, length = 257, 2 * args.pairs, args.seq
    ids = rng.integers(0, vocab, (args.pairs, 2, length)).astype("int32")
    mask = np.zeros((args.pairs, 2, length), "float32")
    mask[:, :, length // 2:] = 1.0  # second half of each row is the response
    flat = ids.reshape(rows, length)
    tokens = rows * (length - 1)  # input tokens per step, the same in every mode

    def model():
        keras.utils.set_random_seed(0)
        return CausalLM.from_preset(args.preset, vocab_size=vocab, max_sequence_length=length)

    pretrain = model()
    pretrain.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=args.jit)
    policy = model()
    dpo_copy = DPOModel(policy, frozen_copy(policy))
    dpo_copy.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=args.jit)
    policy2 = model()
    batch = {"token_ids": ids, "loss_mask": mask}
    dpo_pre = DPOModel(policy2, None)
    dpo_pre.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=args.jit)
    pre_batch = {**batch, "reference_logps": compute_reference_logps(policy2, batch)}

    steps = {
        "pre-training step": lambda: pretrain.train_on_batch(flat[:, :-1], flat[:, 1:]),
        "DPO step, frozen reference copy": lambda: dpo_copy.train_on_batch(batch),
        "DPO step, precomputed reference": lambda: dpo_pre.train_on_batch(pre_batch),
    }
    for step in steps.values():
        step()  # trace and compile outside the timing
    # Interleave the modes (A B C A B C ...) so that a change of machine load hits all of them;
    # keep each mode's fastest timing.
    times = {name: float("inf") for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            t = best_of(lambda s=step: [s() for _ in range(args.steps)], 1) / args.steps
            times[name] = min(times[name], t)
    base = times["pre-training step"]
    rows_out = [{"step": name, "ms/step": 1000 * t, "tokens/s": tokens / t,
                 "x pre-training": t / base} for name, t in times.items()]
    report("dpo_step", rows_out, {**vars(args), "tokens_per_step": tokens,
                                  "rows_per_step": rows})


if __name__ == "__main__":
    main()
