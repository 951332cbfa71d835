"""The feedback loop in miniature: pre-train, sample, rate, DPO, measure -- in minutes on a CPU.

The task is two-operand addition written as text, "07+13=20". The pre-training corpus is noisy on
purpose: only `correct_fraction` of its lines carry the right sum, the rest a near miss (the sum
plus or minus 1 or 2), so the pre-trained model answers correctly about that often when sampled at
temperature 1. The rater stands in for human raters and is exact and checkable: a completion is
preferred when it is the correct sum, zero-padded to two digits, followed by end-of-text. Pairs
(a correct sample, a wrong sample of the same prompt) train DPO on training prompts only; the
figures are measured on held-out prompts that DPO never saw:

- the rate of correct answers before and after, sampling at temperature 1;
- the KL divergence to the reference, a Monte-Carlo estimate over the policy's own samples of
  log pi(y|x) - log pi_ref(y|x) (nats per completion);
- the validation loss on held-out lines of the pre-training distribution, before and after;
- the implicit-reward accuracy on held-out pairs;
- a control run trained on the same pairs with chosen/rejected shuffled (a coin flip per pair),
  which carries no preference signal and must leave the rate where it started.

Example:
```python
from kzoo.alignment.feedback_loop import LoopConfig, run_feedback_loop
report = run_feedback_loop(LoopConfig(pretrain_epochs=1, dpo_epochs=1))
report["after"]["rate"] - report["before"]["rate"]
```
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import keras
import numpy as np

from kzoo._quiet import set_random_seed
from kzoo.alignment.dpo import DPOModel, compute_reference_logps
from kzoo.alignment.sft import response_nll
from kzoo.data.preference import encode_pairs, preference_dataset
from kzoo.models import CausalLM
from kzoo.tokenizers import CharTokenizer
from kzoo.training.config import between, checked

ALPHABET = "0123456789+="


@dataclasses.dataclass
class LoopConfig:
    """Every knob of the miniature loop (the recipe's YAML mirrors these fields).

    Args:
        max_operand: int. operands are 0 .. max_operand - 1 (at most 50: sums keep 2 digits).
        correct_fraction: float. share of pre-training lines with the correct sum.
        wrong_spread: int. wrong lines carry sum +- 1 .. wrong_spread.
        lines_per_problem: int. pre-training lines per (a, b) problem.
        held_out_fraction: float. share of problems whose prompts DPO never sees.
        model: dict. `CausalLM` constructor arguments (vocab size is set from the tokenizer).
        pretrain_epochs: int. epochs over the noisy corpus.
        pretrain_batch_size: int. rows per pre-training step.
        pretrain_learning_rate: float. AdamW learning rate for pre-training.
        samples_per_prompt: int. completions sampled per training prompt to build pairs.
        pairs_per_prompt: int. at most this many (correct, wrong) pairs per prompt.
        eval_samples_per_prompt: int. samples per held-out prompt for the rates and the KL.
        loss: str. DPO-family loss name (`kzoo.losses.list_losses()`).
        beta: float. DPO beta.
        rpo_alpha: float. weight of the RPO term (the chosen answers' NLL) added to the loss.
        rounds: int. sample -> rate -> pair -> train rounds (on-policy, iterated DPO).
        dpo_epochs: int. epochs over each round's pairs.
        dpo_batch_size: int. pairs per DPO step.
        dpo_learning_rate: float. Adam learning rate for DPO.
        control: bool. also run the shuffled-preference control.
        num_show: int. held-out prompts whose samples are shown before and after.
        seed: int. seeds the corpus, the split, the sampling and the initial weights.
    """

    max_operand: int = checked(20, between(2, 50))
    correct_fraction: float = checked(0.4, "probability")
    wrong_spread: int = checked(2, "positive")
    lines_per_problem: int = checked(24, "positive")
    held_out_fraction: float = checked(0.25, "fraction")
    model: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(
        num_layers=2, num_heads=4, hidden_dim=64, intermediate_dim=256, max_sequence_length=16))
    pretrain_epochs: int = checked(16, "positive")
    pretrain_batch_size: int = checked(128, "positive")
    pretrain_learning_rate: float = checked(3e-3, "positive")
    samples_per_prompt: int = checked(16, "positive")
    pairs_per_prompt: int = checked(4, "positive")
    eval_samples_per_prompt: int = checked(32, "positive")
    loss: str = "sigmoid"
    beta: float = checked(2.0, "positive")
    rpo_alpha: float = checked(0.0, "non_negative")
    rounds: int = checked(8, "positive")
    dpo_epochs: int = checked(2, "positive")
    dpo_batch_size: int = checked(32, "positive")
    dpo_learning_rate: float = checked(2.5e-4, "positive")
    control: bool = True
    num_show: int = checked(4, "non_negative")
    seed: int = 0


# ----------------------------------------------------------------------------- the task
def prompt_text(a: int, b: int) -> str:
    return f"{a:02d}+{b:02d}="


def rate(a: int, b: int, completion: str, finished: bool) -> bool:
    """The programmatic rater: True when the completion is exactly the correct 2-digit sum and
    the model ended it (sampled end-of-text)."""
    return finished and completion == f"{a + b:02d}"


def make_tokenizer() -> CharTokenizer:
    return CharTokenizer(ALPHABET)


def noisy_corpus(problems, config: LoopConfig, rng) -> list[str]:
    """Pre-training lines: the correct sum with probability `correct_fraction`, else a near miss
    drawn uniformly from sum - wrong_spread .. sum + wrong_spread (never the sum, never < 0).

    Near misses keep the wrong answers informative: the model must know the sum to place them,
    so pre-training learns addition quickly; uniform wrong answers barely lower the loss."""
    lines, spread = [], config.wrong_spread
    offsets = [d for d in range(-spread, spread + 1) if d]
    for a, b in problems:
        near = [a + b + d for d in offsets if 0 <= a + b + d <= 99]
        for _ in range(config.lines_per_problem):
            answer = a + b
            if rng.random() >= config.correct_fraction:
                answer = near[int(rng.integers(0, len(near)))]
            lines.append(prompt_text(a, b) + f"{answer:02d}")
    return lines


def encode_lines(tokenizer, lines: list[str]) -> np.ndarray:
    """(lines, 9) ids: the 8 characters then end-of-text."""
    return np.stack([np.append(tokenizer.encode(t), tokenizer.eot_id) for t in lines]).astype(
        np.int32)


# ----------------------------------------------------------------------------- measuring
def sample(model, tokenizer, problems, per_prompt: int, seed: int):
    """Temperature-1 samples: list of (a, b, completion text, finished) per sample."""
    from kzoo.generation import generate

    prompts = [tokenizer.encode(prompt_text(a, b)).tolist() for a, b in problems]
    prompts = [p for p in prompts for _ in range(per_prompt)]
    # 3-token completions: plain graphs beat XLA, whose compile time would dominate.
    result = generate(model, prompts, max_new_tokens=3, sampler="random", seed=seed,
                      stop_token_ids=[tokenizer.eot_id], jit_compile=False)
    owners = [ab for ab in problems for _ in range(per_prompt)]
    return [(a, b, tokenizer.decode(ids), reason == "stop")
            for (a, b), ids, reason in zip(owners, result.token_ids, result.finish_reasons)]


def correct_rate(samples) -> float:
    return float(np.mean([rate(a, b, text, done) for a, b, text, done in samples]))


def make_pairs(samples, pairs_per_prompt: int, rng) -> list[dict]:
    """(correct, wrong) pairs of the same prompt, as TRL-style records."""
    by_prompt: dict = {}
    for a, b, text, done in samples:
        good = rate(a, b, text, done)
        by_prompt.setdefault((a, b), ([], []))[0 if good else 1].append(text)
    pairs = []
    for (a, b), (good, bad) in by_prompt.items():
        good, bad = list(dict.fromkeys(good)), list(dict.fromkeys(bad))  # distinct texts
        rng.shuffle(bad)
        for i in range(min(pairs_per_prompt, len(bad)) if good else 0):
            pairs.append({"prompt": prompt_text(a, b), "chosen": good[i % len(good)],
                          "rejected": bad[i]})
    return pairs


def kl_to_reference(policy, reference_logps_fn, tokenizer, problems, per_prompt, seed):
    """Monte-Carlo KL(pi || pi_ref) in nats per completion, over the policy's own samples."""
    records = [{"prompt": prompt_text(a, b), "chosen": text, "rejected": text}
               for a, b, text, _ in sample(policy, tokenizer, problems, per_prompt, seed)]
    arrays = encode_pairs(records, tokenizer, max_length=10, template="raw")
    policy_logps = compute_reference_logps(policy, arrays, batch_size=256)[:, 0]
    return float(np.mean(policy_logps - reference_logps_fn(arrays)[:, 0]))


def validation_loss(model, rows: np.ndarray, answer_only: bool = False) -> float:
    """Mean next-token NLL over every target of held-out pre-training lines (or over the
    answer's 2 digits and end-of-text only)."""
    mask = np.ones_like(rows, np.float32)
    if answer_only:
        mask[:, :6] = 0.0  # "aa+bb=" is the prompt: 6 tokens
    return response_nll(model, {"token_ids": rows, "loss_mask": mask}, batch_size=512)


# ----------------------------------------------------------------------------- stages
def pretrain(config: LoopConfig, tokenizer, rows: np.ndarray) -> CausalLM:
    set_random_seed(config.seed)
    model = CausalLM(vocab_size=tokenizer.vocab_size, **config.model)
    model.compile(optimizer=keras.optimizers.AdamW(config.pretrain_learning_rate))
    model.fit(rows[:, :-1], rows[:, 1:], batch_size=config.pretrain_batch_size,
              epochs=config.pretrain_epochs, verbose=0, shuffle=True)
    return model


def encode_records(pairs: list[dict], tokenizer) -> dict:
    return encode_pairs(pairs, tokenizer, max_length=10, template="raw")


def dpo_rounds(config: LoopConfig, base: CausalLM, tokenizer, problems, held_out: dict, rng,
               shuffle: bool = False, log=print, on_round=None):
    """Iterated DPO from a copy of `base`: each round samples the current policy on the
    training prompts, rates the samples, pairs them and trains on the pairs. The reference is
    always `base`, through precomputed log-probs (no second model in memory). With `shuffle`,
    each pair's chosen and rejected are swapped on a coin flip (the no-signal control).
    `on_round(round, policy)` is called after each round's training."""
    policy = CausalLM.from_config(base.get_config())
    policy.set_weights(base.get_weights())
    dpo = DPOModel(policy, reference=None, loss=config.loss, beta=config.beta,
                   rpo_alpha=config.rpo_alpha)
    dpo.compile(optimizer=keras.optimizers.Adam(config.dpo_learning_rate))
    history, pair_counts, flipped = {}, [], 0
    for r in range(config.rounds):
        seed = config.seed + 1000 * (r + 1) + (500 if shuffle else 0)
        pairs = make_pairs(sample(policy, tokenizer, problems, config.samples_per_prompt, seed),
                           config.pairs_per_prompt, rng)
        pair_counts.append(len(pairs))
        if not pairs:
            log(f"round {r + 1}: no (correct, wrong) pairs left; stopping")
            break
        arrays = encode_records(pairs, tokenizer)
        arrays["reference_logps"] = compute_reference_logps(base, arrays, batch_size=256)
        if shuffle:
            flips = rng.random(len(pairs)) < 0.5
            flipped += int(flips.sum())
            for key in ("token_ids", "loss_mask", "lengths", "reference_logps"):
                arrays[key][flips] = arrays[key][flips][:, ::-1]  # swap chosen and rejected
        fit = dpo.fit(preference_dataset(arrays, config.dpo_batch_size, seed=seed),
                      epochs=config.dpo_epochs, verbose=0, shuffle=False)
        for k, v in fit.history.items():
            history.setdefault(k, []).extend(float(x) for x in v)
        log(f"round {r + 1}: {len(pairs)} pairs, DPO loss {fit.history['loss'][-1]:.3f}")
        if on_round is not None:  # e.g. measure the policy after each round
            on_round(r + 1, policy)
    logs = dpo.evaluate(preference_dataset(held_out, 256, shuffle=False), verbose=0,
                        return_dict=True)
    return policy, {"history": history, "pairs_per_round": pair_counts, "flipped": flipped,
                    "held_out_logs": {k: float(v) for k, v in logs.items()}}


def run_feedback_loop(config: LoopConfig, log=print, score=None) -> dict:
    """Run the whole loop and return the report (JSON-serialisable dict).

    Args:
        config: LoopConfig. the loop.
        log: callable. progress lines.
        score: callable or None. `score(model, tokenizer)` -> {task: {metric: value}} (a
            recipe's `RecipeEval.score`): the pre-trained model, the DPO policy and the
            control are scored with it, into `report["eval"]` (before, after, change, control).

    Example:
    ```python
    from kzoo.alignment.feedback_loop import LoopConfig, run_feedback_loop
    report = run_feedback_loop(LoopConfig())
    ```
    """
    if not 2 <= config.max_operand <= 50:
        raise ValueError(f"`max_operand` must be in [2, 50]. Received: {config.max_operand}")
    start = time.time()
    rng = np.random.default_rng(config.seed)
    tokenizer = make_tokenizer()
    problems = [(a, b) for a in range(config.max_operand) for b in range(config.max_operand)]
    order = rng.permutation(len(problems))
    n_held = max(1, int(round(len(problems) * config.held_out_fraction)))
    held_out = [problems[i] for i in order[:n_held]]
    train_problems = [problems[i] for i in order[n_held:]]

    # Pre-training corpus over every problem (noisy answers); 10% of lines held out for val.
    rows = encode_lines(tokenizer, noisy_corpus(problems, config, rng))
    rows = rows[rng.permutation(len(rows))]
    n_val = len(rows) // 10
    val_rows, train_rows = rows[:n_val], rows[n_val:]
    log(f"pre-training on {len(train_rows)} lines ({len(problems)} problems)...")
    base = pretrain(config, tokenizer, train_rows)
    t_pretrain = time.time() - start

    # Held-out pairs (base samples on prompts DPO never sees) for the implicit-reward check.
    s = config.seed
    held_pairs = make_pairs(sample(base, tokenizer, held_out, config.samples_per_prompt, s + 2),
                            config.pairs_per_prompt, rng)
    if not held_pairs:
        raise ValueError("The rater produced no (correct, wrong) pairs: the base model is "
                         "always right or always wrong. Change correct_fraction or training.")
    held_arrays = encode_records(held_pairs, tokenizer)
    base_logps = lambda arrays: compute_reference_logps(base, arrays, batch_size=256)  # noqa: E731
    held_arrays["reference_logps"] = base_logps(held_arrays)

    eval_n = config.eval_samples_per_prompt
    before_samples = sample(base, tokenizer, held_out, eval_n, s + 3)
    before = {"rate": correct_rate(before_samples), "val_loss": validation_loss(base, val_rows),
              "val_answer_loss": validation_loss(base, val_rows, answer_only=True)}
    scored = {"before": score(base, tokenizer)} if score else {}

    def measure(policy):
        samples = sample(policy, tokenizer, held_out, eval_n, s + 4)
        return samples, {
            "rate": correct_rate(samples),
            "val_loss": validation_loss(policy, val_rows),
            "val_answer_loss": validation_loss(policy, val_rows, answer_only=True),
            "kl_to_reference": kl_to_reference(policy, base_logps, tokenizer, held_out, eval_n,
                                               s + 5),
        }

    log(f"DPO, {config.rounds} rounds of sample -> rate -> pair -> train...")
    policy, info = dpo_rounds(config, base, tokenizer, train_problems, held_arrays, rng, log=log)
    after_samples, after = measure(policy)
    after["implicit_reward_accuracy"] = info["held_out_logs"]["rewards/accuracy"]
    if score:
        scored["after"] = score(policy, tokenizer)
    report = {
        "config": dataclasses.asdict(config),
        "problems": {"train": len(train_problems), "held_out": len(held_out)},
        "pairs": {"train_per_round": info["pairs_per_round"], "held_out": len(held_pairs)},
        "samples_per_rate": len(before_samples),
        "before": before,
        "after": after,
        "dpo_history": info["history"],
        "held_out_logs": info["held_out_logs"],
        "examples": show_examples(held_out[: config.num_show], before_samples, after_samples,
                                  eval_n),
    }
    if config.control:
        log("control: the same loop with shuffled preferences...")
        control_policy, cinfo = dpo_rounds(config, base, tokenizer, train_problems, held_arrays,
                                           rng, shuffle=True, log=log)
        _, control = measure(control_policy)
        control["implicit_reward_accuracy"] = cinfo["held_out_logs"]["rewards/accuracy"]
        control["flipped_pairs"] = cinfo["flipped"]
        control["pairs_per_round"] = cinfo["pairs_per_round"]
        report["control"] = control
        if score:
            scored["control"] = score(control_policy, tokenizer)
    if score:
        from kzoo.training.evaluation import compare

        report["eval"] = compare(scored["before"], scored["after"])
        if "control" in scored:
            report["eval"]["control"] = scored["control"]
    n = report["samples_per_rate"]
    p = before["rate"]
    report["rate_standard_error"] = float(np.sqrt(max(p * (1 - p), 1e-12) / n))
    report["seconds"] = {"pretrain": t_pretrain, "total": time.time() - start}
    return report


def show_examples(problems, before_samples, after_samples, per_prompt: int, k: int = 6):
    """The first `k` samples of each shown held-out prompt, before and after ("..." marks a
    completion cut at the length limit)."""

    def pick(samples, i):
        rows = samples[i * per_prompt: i * per_prompt + k]
        return [text + ("" if done else "...") for _, _, text, done in rows]

    return [{"prompt": prompt_text(a, b), "answer": f"{a + b:02d}",
             "before": pick(before_samples, i), "after": pick(after_samples, i)}
            for i, (a, b) in enumerate(problems)]


__all__ = ["LoopConfig", "rate", "run_feedback_loop"]
