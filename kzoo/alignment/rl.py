"""On-policy RL from feedback: the GRPO / RLOO loop of sample -> score -> advantage -> update.

Each generation batch takes P = batch_size / G prompts, samples G completions of each with the
compiled generator, scores them with the rewards (`kzoo.alignment.rewards`), turns the scores
into advantages (`kzoo.losses.policy_gradient`), then runs `num_iterations` passes of
`steps_per_generation` optimizer steps of `PolicyGradientModel` over it. When the policy moves
between sampling and an update (several iterations or steps), the log-probs the completions
had when sampled are kept (`old_logps`) and the clipped ratio does its work; with one of each
the ratio is 1 and the step is plain REINFORCE with a baseline.

The reference of the KL term: `reference` (a frozen copy), the policy with its LoRA adapters
off ("adapters_off"), or none when `beta` is 0 (no second model in memory).

Example:
```python
from kzoo.alignment.rl import OnlineConfig, build_trainer, train_online
config = OnlineConfig(algorithm="grpo", num_generations=8, batch_size=64, max_new_tokens=3)
trainer = build_trainer(policy, config, optimizer=keras.optimizers.Adam(1e-5))
history = train_online(trainer, tokenizer, prompts, rewards, config, steps=50)
history[-1]["reward"], history[-1]["frac_reward_zero_std"]
```
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings

import numpy as np

from kzoo import backend
from kzoo.alignment.online import ALGORITHMS, PolicyGradientModel, TokenLogps
from kzoo.alignment.rollout import encode_prompts, predict_rows, sample_groups
from kzoo.losses import policy_gradient as pg
from kzoo.training.config import checked
from kzoo.training.recipe import DivergedError


@dataclasses.dataclass
class OnlineConfig:
    """The knobs of GRPO and RLOO (the recipes' `grpo:` / `rloo:` and `generation:` sections).

    Args:
        algorithm: str. "grpo" or "rloo".
        num_generations: int. G, completions per prompt (>= 2: the group is the baseline).
        batch_size: int. completions per generation batch; a multiple of G.
        steps_per_generation: int. optimizer steps each pass over a generation batch is split
            into (batch_size / steps_per_generation completions a step).
        num_iterations: int. passes over each generation batch (TRL's mu).
        max_new_tokens: int. completion length limit.
        max_prompt_length: int. prompts keep their last this-many tokens.
        temperature: float. sampling temperature (> 0); log-probs use the same.
        top_k: int or None. sample from the k likeliest tokens only.
        top_p: float or None. nucleus sampling.
        beta: float. KL strength: GRPO adds beta x k3 KL per token to the loss, RLOO
            subtracts beta x the sequence's k1 KL from its reward. 0 keeps no reference.
        epsilon: float. lower clip range of the ratio.
        epsilon_high: float or None. upper clip range (None: epsilon).
        scale_rewards: str. GRPO: "group", "batch" or "none" (see `group_normalized`).
        normalize_advantages: bool. RLOO: standardise the advantages over the batch.
        loss_type: str. GRPO's reduction: "dapo" (default), "bnpo", "grpo", "dr_grpo".
        mask_truncated_completions: bool. completions cut at `max_new_tokens` add no loss.
        prompt_kl_coef: float. weight of a k3 KL to the reference on the prompt tokens (the
            policy's predictions of the prompt text): the policy-gradient loss never touches
            them, so without it they drift (needs a reference).
        zero_std_warn_steps: int. warn after this many generation batches in a row where
            every group's rewards were equal (no learning signal).
        jit_compile: bool. XLA-compile the generator; on PyTorch also record the train step
            (`kzoo.backend.compile_train_step`).
    """

    algorithm: str = "grpo"
    num_generations: int = checked(8, "positive")
    batch_size: int = checked(64, "positive")
    steps_per_generation: int = checked(1, "positive")
    num_iterations: int = checked(1, "positive")
    max_new_tokens: int = checked(64, "positive")
    max_prompt_length: int = checked(256, "positive")
    temperature: float = checked(1.0, "positive")
    top_k: int | None = checked(None, "positive")
    top_p: float | None = checked(None, "probability")
    beta: float = checked(0.0, "non_negative")
    epsilon: float = checked(0.2, "positive")
    epsilon_high: float | None = checked(None, "positive")
    scale_rewards: str = "group"
    normalize_advantages: bool = False
    loss_type: str = "dapo"
    mask_truncated_completions: bool = False
    prompt_kl_coef: float = checked(0.0, "non_negative")
    zero_std_warn_steps: int = checked(10, "positive")
    jit_compile: bool = True

    def check(self):
        """One line naming the setting and how to fix it, before any work."""
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}. Received: "
                             f"{self.algorithm!r}")
        g = self.num_generations
        if g < 2:
            raise ValueError(f"num_generations={g}: {self.algorithm.upper()} compares each "
                             "completion with the others of its prompt, so it needs a group of "
                             "at least 2")
        if self.batch_size % g:
            lower, upper = (self.batch_size // g) * g, (self.batch_size // g + 1) * g
            fix = f"{lower} or {upper}" if lower else str(upper)
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of "
                             f"num_generations={g}: each prompt needs its whole group in the "
                             f"batch; set batch_size to {fix}")
        if self.batch_size % self.steps_per_generation:
            raise ValueError(f"batch_size={self.batch_size} does not split into "
                             f"steps_per_generation={self.steps_per_generation} equal steps")
        if self.scale_rewards not in pg.SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {list(pg.SCALE_REWARDS)}. "
                             f"Received: {self.scale_rewards!r}")
        if self.loss_type not in pg.LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {list(pg.LOSS_TYPES)}. Received: "
                             f"{self.loss_type!r}")

    @property
    def sampler(self) -> dict:
        """The generator's sampler config."""
        from kzoo import samplers

        name = "top_p" if self.top_p is not None else "top_k" if self.top_k else "random"
        kwargs = {"temperature": self.temperature}
        if self.top_p is not None:
            kwargs.update(p=self.top_p, **({"top_k": self.top_k} if self.top_k else {}))
        elif self.top_k:
            kwargs["k"] = self.top_k
        return samplers.serialize(samplers.get(name, **kwargs))

    @property
    def keeps_old_logps(self) -> bool:
        """Whether the policy moves between sampling and an update (or RLOO needs them)."""
        return (self.num_iterations > 1 or self.steps_per_generation > 1
                or (self.algorithm == "rloo" and self.beta > 0))


def build_trainer(policy, config: OnlineConfig, optimizer) -> PolicyGradientModel:
    """`PolicyGradientModel` for `config`, compiled with `optimizer`."""
    config.check()
    model = PolicyGradientModel(
        policy, algorithm=config.algorithm, beta=config.beta, epsilon=config.epsilon,
        epsilon_high=config.epsilon_high, loss_type=config.loss_type,
        temperature=config.temperature, max_completion_length=config.max_new_tokens,
        prompt_kl_coef=config.prompt_kl_coef)
    model.compile(optimizer=optimizer)
    # PyTorch: the train step recorded once (every row has one fixed length) and replayed;
    # TensorFlow and JAX: nothing more (Keras' "auto").
    backend.compile_train_step(model, config.jit_compile)
    return model


class Diverged(DivergedError):
    """A non-finite loss; the policy holds the weights of the last good generation batch."""


def score(rewards, prompts, rows, batch):
    """Score a generation batch: `rewards` called with each row's prompt, its completion and
    its prompt's columns (row i was sampled from prompt `rows[i]`); returns
    `(total, per_reward)` as `RewardSet` does."""
    columns = {k: [v[i] for i in rows] for k, v in prompts.columns.items()}
    return rewards([prompts.prompts[i] for i in rows], batch.texts, columns,
                   batch.completion_ids, batch.finished)


def _group_std_mean(rewards, g):
    grouped = np.asarray(rewards, np.float64).reshape(-1, g)
    return float(np.nanmean(pg.nanstd(grouped, axis=1)))


def train_online(trainer: PolicyGradientModel, tokenizer, prompts, rewards, config: OnlineConfig,
                 steps: int, reference=None, template: str = "raw", seed: int = 0,
                 on_step=None, log=print) -> list[dict]:
    """Run `steps` generation batches of GRPO / RLOO; returns one log dict per batch.

    Args:
        trainer: PolicyGradientModel. from `build_trainer` (compiled).
        tokenizer: kzoo tokenizer. the policy's.
        prompts: kzoo.data.prompts.PromptSet. the training prompts and reward columns.
        rewards: kzoo.alignment.rewards.RewardSet. scores completions.
        config: OnlineConfig. the algorithm's settings.
        steps: int. generation batches to run.
        reference: None, a CausalLM or "adapters_off". the KL reference (needed when
            config.beta > 0).
        template: str. how string prompts are rendered (`encode_prompts`).
        seed: int. prompt order and sampling.
        on_step: callable or None. `on_step(step, logs)` after every batch (step from 1).
        log: callable. progress lines.

    Raises:
        Diverged: on a non-finite loss; the policy is back at the weights it had before that
            generation batch.
    """
    config.check()
    policy, g = trainer.policy, config.num_generations
    needs_reference = config.beta > 0 or config.prompt_kl_coef > 0
    if needs_reference and reference is None:
        raise ValueError(f"beta={config.beta}, prompt_kl_coef={config.prompt_kl_coef} need a "
                         "reference model (or 'adapters_off' with LoRA); set both to 0 to "
                         "train without one")
    per_batch = config.batch_size // g
    prompt_ids = encode_prompts(prompts.prompts, tokenizer, config.max_prompt_length, template,
                                prompts.columns)
    width = max(len(p) for p in prompt_ids)
    old_scorer = TokenLogps(policy, config.temperature) if config.keeps_old_logps else None
    ref_scorer = None
    if needs_reference:
        ref_scorer = (TokenLogps(policy, config.temperature, adapters_off=True)
                      if isinstance(reference, str) else TokenLogps(reference, config.temperature))
    rng = np.random.default_rng(seed)
    order, cursor = rng.permutation(len(prompt_ids)), 0
    history, zero_run, warned = [], 0, False
    rows_per_step = config.batch_size // config.steps_per_generation
    for step in range(1, steps + 1):
        start = time.perf_counter()
        if cursor + per_batch > len(order):  # a new epoch over the prompts
            order, cursor = rng.permutation(len(prompt_ids)), 0
        pick = order[cursor: cursor + per_batch] if per_batch <= len(order) else rng.choice(
            len(order), per_batch)
        cursor += per_batch
        batch = sample_groups(policy, tokenizer, [prompt_ids[i] for i in pick], g,
                              config.max_new_tokens, width, config.sampler,
                              seed=seed * 100_003 + step, jit_compile=config.jit_compile)
        total, per_reward = score(rewards, prompts, np.repeat(pick, g), batch)
        mask = batch.completion_mask.copy()
        if config.mask_truncated_completions:
            mask[~batch.finished] = 0.0
        arrays = {"token_ids": batch.token_ids, "completion_mask": mask}
        old = predict_rows(old_scorer, batch.token_ids) if old_scorer is not None else None
        ref = predict_rows(ref_scorer, batch.token_ids) if ref_scorer is not None else None
        shaped, seq_kl = np.asarray(total, np.float64), None
        if config.algorithm == "rloo" and ref is not None and config.beta > 0:
            seq_kl = ((old - ref) * mask[:, 1:]).sum(axis=1)  # k1, summed over the completion
            shaped = shaped - config.beta * seq_kl
        if ref is not None and (config.algorithm == "grpo" or config.prompt_kl_coef):
            arrays["ref_logps"] = ref
        if config.prompt_kl_coef:
            arrays["prompt_mask"] = batch.prompt_mask
        if config.algorithm == "grpo":
            advantages, zero_std = pg.group_normalized(shaped, g, config.scale_rewards)
        else:
            advantages, zero_std = pg.leave_one_out(shaped, g, config.normalize_advantages)
        arrays["advantages"] = advantages
        if old is not None:
            arrays["old_logps"] = old
        # DAPO: every completion token of the generation batch weighs the same in every step.
        arrays["num_items"] = np.full(len(mask), mask.sum() / config.steps_per_generation,
                                      np.float32)
        snapshot = policy.get_weights()
        train_start = time.perf_counter()
        step_logs = []
        for _ in range(config.num_iterations):
            perm = rng.permutation(len(mask))
            for s in range(config.steps_per_generation):
                idx = np.sort(perm[s * rows_per_step: (s + 1) * rows_per_step])
                logs = trainer.train_on_batch({k: v[idx] for k, v in arrays.items()},
                                              return_dict=True)
                step_logs.append({k: float(v) for k, v in logs.items()})
                if not math.isfinite(step_logs[-1]["loss"]):
                    policy.set_weights(snapshot)
                    raise Diverged(f"non-finite loss at generation batch {step}; the policy "
                                   "is back at the weights before it")
        train_seconds = time.perf_counter() - train_start
        seconds = time.perf_counter() - start
        logs = {name: float(np.mean([s[name] for s in step_logs])) for name in step_logs[0]}
        if seq_kl is not None:  # RLOO's KL is the one folded into its rewards
            logs["kl"] = float(seq_kl.sum() / max(mask.sum(), 1.0))
        lengths = batch.lengths
        logs.update({
            "step": step,
            "reward": float(np.nanmean(total)),
            "reward_std": _group_std_mean(total, g),
            **{f"rewards/{name}/mean": float(np.nanmean(v)) for name, v in per_reward.items()},
            **{f"rewards/{name}/std": float(np.nanstd(v)) for name, v in per_reward.items()},
            "frac_reward_zero_std": float(zero_std.mean()),
            "completions/mean_length": float(lengths.mean()),
            "completions/max_length": int(lengths.max()),
            "completions/clipped_ratio": float(1.0 - batch.finished.mean()),
            "learning_rate": _learning_rate(trainer.optimizer),
            "tokens_per_second": batch.new_tokens / max(batch.seconds, 1e-9),
            "generation_share": batch.seconds / seconds,
            "seconds/generation": batch.seconds,
            "seconds/train": train_seconds,
            "seconds/step": seconds,
        })
        history.append(logs)
        zero_run = zero_run + 1 if logs["frac_reward_zero_std"] == 1.0 else 0
        if zero_run >= config.zero_std_warn_steps and not warned:
            warned = True
            message = (f"every group's rewards were equal for {zero_run} generation batches "
                       "in a row: no learning signal (the rewards cannot tell the completions "
                       "apart; check the reward functions, raise temperature or "
                       "num_generations)")
            warnings.warn(message, stacklevel=2)
            log(f"warning: {message}")
        if on_step is not None:
            on_step(step, logs)
    return history


def _learning_rate(optimizer) -> float:
    try:
        return float(np.asarray(optimizer.learning_rate))
    except (TypeError, ValueError):
        return float("nan")


def sample_rewards(policy, tokenizer, prompts, rewards, num_samples: int, max_new_tokens: int,
                   sampler="random", template: str = "raw", max_prompt_length: int = 256,
                   seed: int = 0, jit_compile: bool = True) -> dict:
    """Mean reward (and per reward) of `num_samples` completions of every prompt: how a policy
    is measured on held-out prompts.

    Returns:
        dict: "reward", "rewards/<name>" means, "completions/clipped_ratio", "samples".
    """
    prompt_ids = encode_prompts(prompts.prompts, tokenizer, max_prompt_length, template,
                                prompts.columns)
    batch = sample_groups(policy, tokenizer, prompt_ids, num_samples, max_new_tokens,
                          max(len(p) for p in prompt_ids), sampler, seed=seed,
                          jit_compile=jit_compile)
    rows = np.repeat(np.arange(len(prompt_ids)), num_samples)
    total, per_reward = score(rewards, prompts, rows, batch)
    return {"reward": float(np.nanmean(total)),
            **{f"rewards/{k}": float(np.nanmean(v)) for k, v in per_reward.items()},
            "completions/clipped_ratio": float(1.0 - batch.finished.mean()),
            "samples": int(len(rows))}


__all__ = ["Diverged", "OnlineConfig", "build_trainer", "sample_rewards", "train_online"]
