"""On-policy RL on the feedback loop's arithmetic task: GRPO and RLOO vs iterated DPO.

The base model is the feedback loop's (`kzoo.alignment.feedback_loop`: pre-trained on noisy
two-digit sums, right about 30% of the time at temperature 1). From it, side by side in one run:

- GRPO and RLOO (`kzoo.alignment.rl`), rewarded 1 for the exact sum followed by end-of-text
  (`recipes/rewards/arithmetic.py:correct`), G completions per prompt, `--steps` generation
  batches of `--prompts-per-batch` x G completions, KL to the base model `--beta` on the
  completions and `--prompt-kl` on the prompt tokens;
- a control: GRPO with the rewards shuffled across the batch's completions (no signal);
- iterated DPO (`dpo_rounds`), each round sampling `samples_per_prompt` completions of every
  training prompt, for `--dpo-rounds` rounds (or until GRPO's number of completions).

Every arm is measured after the same numbers of sampled completions (multiples of one DPO
round's samples): the correct rate on held-out prompts at temperature 1 and the validation loss
on held-out lines of the noisy corpus. Then one GRPO step of a gpt_baby-shape policy is split
into generation and training, and its generator's tokens/s are compared with the same
generator called alone on the same prompts (and with `generate_speed.py`'s greedy figure for
that shape).

Run: `python benchmarks/rl_arithmetic.py` (about 15 minutes on 2 cores); `--quick` smoke-tests.
Writes benchmarks/results/rl_arithmetic.json, the figures under docs/assets/figures/ (`--figures`).
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def arithmetic_setup(seed: int, quick: bool):
    import keras

    from kzoo.alignment import feedback_loop as fl
    from kzoo.data.prompts import PromptSet

    config = fl.LoopConfig(seed=seed, **({"pretrain_epochs": 4} if quick else {}))
    rng = np.random.default_rng(seed)
    tokenizer = fl.make_tokenizer()
    problems = [(a, b) for a in range(config.max_operand) for b in range(config.max_operand)]
    order = rng.permutation(len(problems))
    n_held = int(round(len(problems) * config.held_out_fraction))
    held, train = [problems[i] for i in order[:n_held]], [problems[i] for i in order[n_held:]]
    rows = fl.encode_lines(tokenizer, fl.noisy_corpus(problems, config, rng))
    rows = rows[rng.permutation(len(rows))]
    val_rows = rows[: len(rows) // 10]
    keras.utils.set_random_seed(seed)
    base = fl.pretrain(config, tokenizer, rows[len(rows) // 10:])

    def prompt_set(probs):
        return PromptSet([fl.prompt_text(a, b) for a, b in probs],
                         {"answer": [f"{a + b:02d}" for a, b in probs]},
                         [f"problem {a}+{b}" for a, b in probs])

    return dict(config=config, rng=rng, tokenizer=tokenizer, base=base, held=held, train=train,
                val_rows=val_rows, held_set=prompt_set(held), train_set=prompt_set(train))


class Shuffled:
    """The control: the rewards of `inner`, permuted across the batch (no signal left)."""

    def __init__(self, inner, seed):
        self.inner, self.rng = inner, np.random.default_rng(seed)

    def __call__(self, prompts, completions, columns, completion_ids, finished):
        total, per = self.inner(prompts, completions, columns, completion_ids, finished)
        perm = self.rng.permutation(len(total))
        return total[perm], {k: v[perm] for k, v in per.items()}


def copy_of(model):
    from kzoo.models import CausalLM

    copy = CausalLM.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def measure(setup, policy, rewards, samples):
    from kzoo.alignment import feedback_loop as fl
    from kzoo.alignment.rl import sample_rewards

    rate = sample_rewards(policy, setup["tokenizer"], setup["held_set"], rewards, samples, 3,
                          "random", max_prompt_length=6, seed=4, jit_compile=False)["reward"]
    return rate, fl.validation_loss(policy, setup["val_rows"])


def run_rl(setup, args, algorithm, rewards, measure_rewards, every, label, log):
    import keras

    from kzoo.alignment.rl import OnlineConfig, build_trainer, train_online

    policy = copy_of(setup["base"])
    reference = copy_of(setup["base"]) if args.beta or args.prompt_kl else None
    g = args.num_generations
    online = OnlineConfig(algorithm=algorithm, num_generations=g,
                          batch_size=g * args.prompts_per_batch, max_new_tokens=3,
                          max_prompt_length=6, beta=args.beta, prompt_kl_coef=args.prompt_kl,
                          jit_compile=False, zero_std_warn_steps=10_000)
    trainer = build_trainer(policy, online, keras.optimizers.Adam(args.lr))
    points = []

    def on_step(step, logs):
        if step % every == 0:
            rate, val = measure(setup, policy, measure_rewards, args.eval_samples)
            points.append({"completions": step * online.batch_size, "rate": rate,
                           "val_loss": val, "kl": logs["kl"], "kl_prompt": logs["kl/prompt"],
                           "reward": logs["reward"]})
            log(f"{label} step {step}: rate {rate:.3f}, val loss {val:.4f}")

    start = time.perf_counter()
    history = train_online(trainer, setup["tokenizer"], setup["train_set"], rewards, online,
                           args.steps, reference=reference, seed=args.seed, on_step=on_step,
                           log=log)
    return points, history, time.perf_counter() - start


def run_dpo(setup, args, measure_rewards, rounds, log):
    from kzoo.alignment import feedback_loop as fl
    from kzoo.alignment.dpo import compute_reference_logps

    config = dataclasses.replace(setup["config"], rounds=rounds, control=False)
    tok, base, rng = setup["tokenizer"], setup["base"], np.random.default_rng(args.seed + 1)
    held_pairs = fl.make_pairs(fl.sample(base, tok, setup["held"], 16, args.seed + 2), 4, rng)
    held_arrays = fl.encode_records(held_pairs, tok)
    held_arrays["reference_logps"] = compute_reference_logps(base, held_arrays, batch_size=256)
    per_round = config.samples_per_prompt * len(setup["train"])
    points = []

    def on_round(r, policy):
        rate, val = measure(setup, policy, measure_rewards, args.eval_samples)
        points.append({"completions": r * per_round, "rate": rate, "val_loss": val})
        log(f"DPO round {r}: rate {rate:.3f}, val loss {val:.4f}")

    start = time.perf_counter()
    fl.dpo_rounds(config, base, tok, setup["train"], held_arrays, rng, log=lambda m: None,
                  on_round=on_round)
    return points, per_round, time.perf_counter() - start


def step_cost(args, log):
    """One GRPO generation batch at the gpt_baby shape: generation vs training, and the
    generator's tokens/s inside the loop vs alone on the same prompts."""
    import keras
    from generate_speed import time_kzoo

    from kzoo.alignment.rewards import RewardSet, load_reward
    from kzoo.alignment.rl import OnlineConfig, build_trainer, train_online
    from kzoo.alignment.rollout import encode_prompts, sample_groups
    from kzoo.data.prompts import PromptSet
    from kzoo.models import CausalLM
    from kzoo.tokenizers import ByteTokenizer

    tok = ByteTokenizer()
    keras.utils.set_random_seed(0)
    policy = CausalLM.from_preset("gpt_baby", vocab_size=tok.vocab_size)
    g, prompts_n, new = 8, 4, args.baby_new_tokens
    texts = [f"Question {i}: what is the capital of country number {i}?" for i in range(32)]
    prompts = PromptSet(texts, {}, [str(i) for i in range(32)])
    online = OnlineConfig(num_generations=g, batch_size=g * prompts_n, max_new_tokens=new,
                          max_prompt_length=48, zero_std_warn_steps=10_000)
    trainer = build_trainer(policy, online, keras.optimizers.Adam(1e-6))
    rewards = RewardSet([load_reward("length")])
    history = train_online(trainer, tok, prompts, rewards, online, args.baby_steps, seed=0,
                           log=lambda m: None)
    steady = history[2:] or history  # the first batches include tracing and compiling
    gen = float(np.median([h["seconds/generation"] for h in steady]))
    train = float(np.median([h["seconds/train"] for h in steady]))
    step = float(np.median([h["seconds/step"] for h in steady]))
    in_loop = float(np.median([h["tokens_per_second"] for h in steady]))
    # The same generator call alone: same prompts, sampler and stops, current weights.
    ids = encode_prompts(texts[: prompts_n], tok, 48)
    alone = []
    for s in range(5):
        batch = sample_groups(policy, tok, ids, g, new, 48, online.sampler, seed=s)
        alone.append(batch.new_tokens / batch.seconds)
    prompt_len = int(np.mean([len(p) for p in ids]))
    greedy = time_kzoo(policy, np.ones((g * prompts_n, prompt_len), "int32"), new, True, 3)
    return {"shape": f"gpt_baby, {g * prompts_n} rows, {new} new tokens",
            "seconds/step": step, "seconds/generation": gen, "seconds/train": train,
            "generation_share": gen / step, "tokens/s in the loop": in_loop,
            "tokens/s alone (same call)": float(np.median(alone[1:])),
            "tokens/s generate_speed greedy": g * prompts_n * new / greedy}


def figures(curves: dict, path_dir: Path):
    from kzoo.viz import plot_curves

    xs = sorted({p["completions"] for pts in curves.values() for p in pts})
    metrics = {"completions": xs}
    keys = ("rate", "val_loss", "reward", "kl", "kl_prompt")
    for name, pts in curves.items():
        by_x = {p["completions"]: p for p in pts}
        for key in keys:
            metrics[f"{name}/{key}"] = [by_x[x].get(key, np.nan) if x in by_x else np.nan
                                        for x in xs]
    names = list(curves)
    rl = [n for n in names if "kl" in curves[n][-1]]
    labels = {f"{n}/{k}": n for n in names for k in keys}
    plot_curves(metrics, [[f"{n}/rate" for n in names], [f"{n}/val_loss" for n in names]],
                path_dir / "rl_correct_rate.png", x="completions",
                titles=["held-out correct rate (temperature 1)", "validation loss"],
                ylabels=["correct rate", "nats / token"], labels=labels)
    plot_curves(metrics, [[f"{n}/reward" for n in rl], [f"{n}/kl" for n in rl],
                          [f"{n}/kl_prompt" for n in rl]],
                path_dir / "rl_reward_kl.png", x="completions",
                titles=["training reward (mean of the batch)", "KL to the reference, completions",
                        "KL to the reference, prompt tokens"],
                ylabels=["reward", "nats / token", "nats / token"], labels=labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--num-generations", type=int, default=16)
    parser.add_argument("--prompts-per-batch", type=int, default=15)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--beta", type=float, default=0.3, help="KL to the reference")
    parser.add_argument("--prompt-kl", type=float, default=1.0, help="prompt_kl_coef")
    parser.add_argument("--dpo-rounds", type=int, default=24,
                        help="iterated DPO rounds (at most as many completions as GRPO)")
    parser.add_argument("--eval-samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baby-steps", type=int, default=10)
    parser.add_argument("--baby-new-tokens", type=int, default=64)
    parser.add_argument("--figures", action="store_true", help="write docs/assets/figures/")
    parser.add_argument("--step-cost-only", action="store_true",
                        help="only the GRPO step split (results/rl_step_cost.json)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_samples, args.baby_steps, args.baby_new_tokens = 20, 4, 3, 8
        args.dpo_rounds = 1

    from kzoo.alignment.rewards import RewardSet, load_reward

    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.step_cost_only:
        cost = step_cost(args, log)
        report("rl_step_cost", [{k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in cost.items()}], vars(args))
        path = ROOT / "benchmarks" / "results" / "rl_step_cost.json"
        record = json.loads(path.read_text())
        record["command"] = "cd benchmarks && ../.venv/bin/python rl_arithmetic.py --step-cost-only"
        path.write_text(json.dumps(record, indent=2) + "\n")
        return
    setup = arithmetic_setup(args.seed, args.quick)
    correct = RewardSet([load_reward(str(ROOT / "recipes/rewards/arithmetic.py:correct"))])
    start_rate, start_val = measure(setup, setup["base"], correct, args.eval_samples)
    log(f"base: rate {start_rate:.3f}, val loss {start_val:.4f}")
    per_round = setup["config"].samples_per_prompt * len(setup["train"])
    batch = args.num_generations * args.prompts_per_batch
    every = max(1, per_round // batch)
    curves, seconds, histories = {}, {}, {}
    for label, algorithm, rewards in (("GRPO", "grpo", correct), ("RLOO", "rloo", correct),
                                      ("GRPO, shuffled rewards", "grpo",
                                       Shuffled(correct, args.seed))):
        curves[label], histories[label], seconds[label] = run_rl(
            setup, args, algorithm, rewards, correct, every, label, log)
    rounds = max(1, min(args.dpo_rounds, args.steps * batch // per_round))
    curves["iterated DPO"], _, seconds["iterated DPO"] = run_dpo(setup, args, correct, rounds,
                                                                log)
    for pts in curves.values():
        pts.insert(0, {"completions": 0, "rate": start_rate, "val_loss": start_val,
                       **({"kl": 0.0, "kl_prompt": 0.0, "reward": start_rate} if "kl" in pts[0]
                          else {})})
    rows = []
    for label, pts in curves.items():
        for p in pts[1:]:
            rows.append({"method": label, "completions sampled": p["completions"],
                         "held-out correct rate": round(p["rate"], 4),
                         "val loss change": f"{100 * (p['val_loss'] / start_val - 1):+.1f}%",
                         "seconds (whole arm)": round(seconds[label], 1)})
    final = [{"method": k, "completions": v[-1]["completions"], "rate": v[-1]["rate"],
              "val_loss_change": v[-1]["val_loss"] / start_val - 1} for k, v in curves.items()]
    cost = step_cost(args, log)
    print("\nGRPO step cost:", cost)
    print("\nfinal:", final)
    report("rl_arithmetic", rows, {**vars(args), "base_rate": start_rate,
                                   "base_val_loss": start_val, "final": final,
                                   "step_cost": cost, "curves": curves})
    if args.figures:
        figures(curves, ROOT / "docs" / "assets" / "figures")


if __name__ == "__main__":
    main()
