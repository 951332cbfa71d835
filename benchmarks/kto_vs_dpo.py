"""KTO on thumbs up / down labels vs DPO on the pairs they came from: held-out implied-reward
accuracy, from the same SFT start, with the same steps and completions per step.

On the instruction set (`KZOO_TEST_DATA` or `--data`), byte tokens, template plain, rows of 256
tokens, `--preset` (default gpt_baby):

1. SFT: a fresh model, `--sft-epochs` on instruction-data.json (held-out prompts left out);
2. DPO: sigmoid loss, beta 0.1, `--batch` pairs (2 x batch completions) per step;
3. KTO: the same training pairs unpaired (chosen = up, rejected = down, shuffled), beta 0.1,
   weights 1, 2 x `--batch` completions per step (plus as many KL rows, scored without
   gradient); the same number of steps.

Both use precomputed reference log-probs (the SFT model), Adam at `--lr`. Reported for each: the
held-out implied-reward accuracy (beta * log-ratio of the chosen response strictly above the
rejected one's, on the held-out pairs of the same prompt split as the DPO recipe; 0 at step 0,
where every reward is 0), the mean margin, and the time per step.

Run: `python benchmarks/kto_vs_dpo.py` (about 5 minutes on 2 cores); `--quick` for a smoke run
(printed, not written).
"""

import argparse
import os
import time
from pathlib import Path

from _common import markdown_table, report


def _data(folder: Path, max_length: int):
    from kzoo.data.instruction import encode_sft, read_instruction_records, split_records
    from kzoo.data.preference import encode_pairs, read_preference_records
    from kzoo.data.unpaired import encode_unpaired, unpair
    from kzoo.tokenizers import ByteTokenizer

    tok = ByteTokenizer()
    sft, _ = split_records(read_instruction_records(folder / "instruction-data.json"), 0.1, 0)
    pairs, _ = read_preference_records(folder / "instruction-preference.json")
    train_pairs, val_pairs = split_records(pairs, 0.1, 0)
    return {"sft": encode_sft(sft, tok, max_length, "plain"),
            "pairs": encode_pairs(train_pairs, tok, max_length, "plain"),
            "val_pairs": encode_pairs(val_pairs, tok, max_length, "plain"),
            "unpaired": encode_unpaired(unpair(train_pairs, seed=0), tok, max_length, "plain")}


def _sft_start(data, opts):
    import keras

    from kzoo.alignment.sft import compile_sft
    from kzoo.data.instruction import sft_dataset
    from kzoo.models import CausalLM

    keras.utils.set_random_seed(0)
    model = CausalLM.from_preset(opts.preset, vocab_size=257,
                                 max_sequence_length=opts.max_length)
    compile_sft(model, keras.optimizers.AdamW(1e-3), jit_compile=True)
    start = time.perf_counter()
    model.fit(sft_dataset(data["sft"], 16, seed=0), epochs=opts.sft_epochs, verbose=0)
    return model.get_weights(), time.perf_counter() - start


def _policy(weights, opts):
    from kzoo.models import CausalLM

    model = CausalLM.from_preset(opts.preset, vocab_size=257,
                                 max_sequence_length=opts.max_length)
    model.set_weights(weights)
    return model


def _train(model, dataset, steps: int) -> float:
    batches = iter(dataset.repeat())
    model.train_on_batch(next(batches))  # the first step compiles: outside the timing
    start = time.perf_counter()
    for _ in range(steps - 1):
        model.train_on_batch(next(batches))
    return (time.perf_counter() - start) / max(1, steps - 1)


def run_dpo(weights, data, opts) -> dict:
    import keras

    from kzoo.alignment.dpo import DPOModel, compute_reference_logps
    from kzoo.alignment.kto import implied_reward_accuracy
    from kzoo.data.preference import preference_dataset

    keras.utils.set_random_seed(0)
    policy = _policy(weights, opts)
    train, val = dict(data["pairs"]), dict(data["val_pairs"])
    for arrays in (train, val):
        arrays["reference_logps"] = compute_reference_logps(policy, arrays, batch_size=16)
    before = implied_reward_accuracy(policy, None, val, 0.1)
    dpo = DPOModel(policy, None, loss="sigmoid", beta=0.1)
    dpo.compile(optimizer=keras.optimizers.Adam(opts.lr), jit_compile=True)
    step_s = _train(dpo, preference_dataset(train, opts.batch, seed=0, drop_remainder=True),
                    opts.steps)
    after = implied_reward_accuracy(policy, None, val, 0.1)
    own = dpo.evaluate(preference_dataset(val, 16, shuffle=False), verbose=0, return_dict=True)
    return {"before": before, "after": after, "step_s": step_s,
            "dpo_rewards_accuracy": float(own["rewards/accuracy"])}


def run_kto(weights, data, opts) -> dict:
    import keras

    from kzoo.alignment.dpo import compute_reference_logps
    from kzoo.alignment.kto import (
        KTOModel,
        compute_unpaired_reference_logps,
        implied_reward_accuracy,
    )
    from kzoo.data.unpaired import unpaired_dataset, with_kl_rows

    keras.utils.set_random_seed(0)
    policy = _policy(weights, opts)
    size = 2 * opts.batch  # the completions of `batch` pairs
    train = with_kl_rows(data["unpaired"], size, seed=0)
    train.update(compute_unpaired_reference_logps(policy, train, batch_size=16))
    val = {**data["val_pairs"],
           "reference_logps": compute_reference_logps(policy, data["val_pairs"], 16)}
    before = implied_reward_accuracy(policy, None, val, 0.1)
    kto = KTOModel(policy, None, loss_type="kto", beta=0.1)
    kto.compile(optimizer=keras.optimizers.Adam(opts.kto_lr or opts.lr), jit_compile=True)
    step_s = _train(kto, unpaired_dataset(train, size), opts.steps)
    after = implied_reward_accuracy(policy, None, val, 0.1)
    return {"before": before, "after": after, "step_s": step_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("KZOO_TEST_DATA", "../shared/data"))
    parser.add_argument("--preset", default="gpt_baby")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--sft-epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="pairs per DPO step")
    parser.add_argument("--steps", type=int, default=124, help="one DPO epoch of 990 pairs")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--kto-lr", type=float, default=None,
                        help="KTO's learning rate (default --lr; TRL's KTO default is 1e-6)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: nano, few steps")
    opts = parser.parse_args()
    if opts.quick:
        opts.preset, opts.max_length, opts.steps, opts.sft_epochs = "gpt_nano", 96, 4, 1
    data = _data(Path(opts.data), opts.max_length)
    weights, sft_s = _sft_start(data, opts)
    rows = []
    results = {"DPO (pairs)": run_dpo(weights, data, opts),
               "KTO (unpaired up/down)": run_kto(weights, data, opts)}
    for name, r in results.items():
        rows.append({"method": name, "steps": opts.steps, "completions/step": 2 * opts.batch,
                     "held-out acc before": r["before"]["rewards/accuracy"],
                     "held-out acc after": r["after"]["rewards/accuracy"],
                     "held-out margin after": r["after"]["rewards/margin"],
                     "reward chosen after": r["after"]["rewards/chosen"],
                     "reward rejected after": r["after"]["rewards/rejected"],
                     "s/step": r["step_s"]})
    settings = {**vars(opts), "sft_seconds": round(sft_s, 1), "beta": 0.1, "template": "plain",
                "tokenizer": "byte", "validation_pairs": len(data["val_pairs"]["token_ids"]),
                "train_pairs": len(data["pairs"]["token_ids"]),
                "dpo_evaluate_rewards_accuracy": results["DPO (pairs)"]["dpo_rewards_accuracy"]}
    if opts.quick:  # a smoke run does not overwrite the recorded result
        print(markdown_table(rows))
        return
    report("kto_vs_dpo", rows, settings)


if __name__ == "__main__":
    main()
