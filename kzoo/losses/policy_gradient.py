"""Policy-gradient pieces of on-policy RL (GRPO, RLOO): advantages, clipped surrogates, KL.

Advantages are computed on the host from the rewards of one generation batch (numpy), the
losses inside the compiled train step (`keras.ops`). Rows of a batch come in groups of G
completions of the same prompt, group after group: row i belongs to prompt i // G.

The formulas follow TRL 1.16 (`grpo_trainer.py`, `rloo_trainer.py`): the group std has
Bessel's correction and 1e-4 is added before dividing; a completion every reward skipped
(NaN) is left out of its group's statistics and gets advantage 0.

Example:
```python
import numpy as np
from kzoo.losses import policy_gradient as pg
rewards = np.array([1.0, 0.0, 0.0, 0.0,  1.0, 1.0, 1.0, 1.0])   # 2 prompts, G = 4
advantages, zero_std = pg.get_advantages("grpo")(rewards, 4)
advantages[:4]   # [1.5, -0.5, -0.5, -0.5]: the right answer is pushed up
zero_std          # [False] * 4 + [True] * 4: the second group carries no signal
```
"""

from __future__ import annotations

import numpy as np
from keras import ops

SCALE_REWARDS = ("group", "batch", "none")
# How the per-token losses of a batch become one number (TRL's `loss_type`).
LOSS_TYPES = ("dapo", "bnpo", "grpo", "dr_grpo")


def _grouped(rewards, group_size: int) -> np.ndarray:
    rewards = np.asarray(rewards, np.float64)
    if group_size < 2 or rewards.size % group_size:
        raise ValueError(f"{rewards.size} rewards do not split into groups of {group_size}")
    return rewards.reshape(-1, group_size)  # (prompts, G)


def nanstd(x, axis=None, keepdims=False):
    """Standard deviation with Bessel's correction, ignoring NaN (TRL's `nanstd`)."""
    count = np.sum(~np.isnan(x), axis=axis, keepdims=True)
    mean = np.nanmean(x, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.nanmean((x - mean) ** 2, axis=axis, keepdims=True) * count / (count - 1)
    var = np.where(count > 1, var, np.nan)
    std = np.sqrt(var)
    return std if keepdims else np.squeeze(std, axis=axis)


def group_normalized(rewards, group_size: int, scale_rewards: str = "group"):
    """GRPO's advantages: reward minus its group's mean, divided by a std (or not).

    Args:
        rewards: array (n,). one reward per completion, NaN where no reward applied.
        group_size: int. G, the completions per prompt.
        scale_rewards: str. "group" (each group's std), "batch" (the whole batch's std, as
            Dr. GRPO / TRL's "batch") or "none" (Dr. GRPO: no division).

    Returns:
        (advantages (n,) float32, zero_std (n,) bool): zero_std marks rows whose group's
        rewards are all equal (they get advantage 0 and carry no learning signal).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {list(SCALE_REWARDS)}. "
                         f"Received: {scale_rewards!r}")
    grouped = _grouped(rewards, group_size)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(grouped, axis=1, keepdims=True)
    group_std = nanstd(grouped, axis=1, keepdims=True)
    advantages = grouped - mean
    if scale_rewards == "batch":
        std = np.full_like(grouped, nanstd(grouped.reshape(-1)))
    else:
        std = np.broadcast_to(group_std, grouped.shape)
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    zero_std = np.broadcast_to(np.isclose(np.nan_to_num(group_std, nan=0.0), 0.0), grouped.shape)
    return (np.nan_to_num(advantages, nan=0.0).reshape(-1).astype(np.float32),
            zero_std.reshape(-1).copy())


def leave_one_out(rewards, group_size: int, normalize: bool = False):
    """RLOO's advantages: reward minus the mean reward of the other G - 1 completions.

    Args:
        rewards: array (n,). one reward per completion (NaN: unscorable, advantage 0).
        group_size: int. G >= 2.
        normalize: bool. then standardise the advantages over the batch (TRL's
            `normalize_advantages`).

    Returns:
        (advantages (n,) float32, zero_std (n,) bool), as `group_normalized`.
    """
    grouped = _grouped(rewards, group_size)
    scorable = np.sum(~np.isnan(grouped), axis=1, keepdims=True)
    total = np.nansum(grouped, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        baseline = (total - grouped) / (scorable - 1)
    advantages = (grouped - baseline).reshape(-1)
    if normalize:
        advantages = (advantages - np.nanmean(advantages)) / (nanstd(advantages) + 1e-4)
    zero_std = np.isclose(np.nan_to_num(nanstd(grouped, axis=1), nan=0.0), 0.0)
    return (np.nan_to_num(advantages, nan=0.0).astype(np.float32),
            np.repeat(zero_std, group_size))


_ADVANTAGES = {"grpo": group_normalized, "rloo": leave_one_out}


def get_advantages(name: str):
    """The advantage estimator registered as `name` ("grpo" or "rloo")."""
    if name not in _ADVANTAGES:
        raise ValueError(f"Unknown advantage estimator {name!r}. Valid: {sorted(_ADVANTAGES)}")
    return _ADVANTAGES[name]


def k3_kl(logps, ref_logps):
    """Per-token k3 estimate of KL(pi || pi_ref): exp(r) - r - 1 with r = ref - logp (>= 0)."""
    r = ref_logps - logps
    return ops.exp(r) - r - 1.0


def clip_flags(ratio, advantages, epsilon_low: float, epsilon_high: float):
    """Where the clipped objective is active: (low, high) float masks, TRL's clip ratios."""
    low = ops.logical_and(ratio < 1.0 - epsilon_low, advantages < 0)
    high = ops.logical_and(ratio > 1.0 + epsilon_high, advantages > 0)
    return ops.cast(low, "float32"), ops.cast(high, "float32")


def clipped_surrogate(log_ratio, advantages, epsilon_low: float, epsilon_high: float):
    """PPO's clipped objective as a loss: -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A).

    `log_ratio` is log pi - log pi_old (per token for GRPO, per sequence for RLOO);
    `advantages` broadcasts against it. Returns (loss, ratio), same shape as `log_ratio`.
    """
    ratio = ops.exp(log_ratio)
    clipped = ops.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    return -ops.minimum(ratio * advantages, clipped * advantages), ratio


def reduce_token_loss(per_token, mask, loss_type: str, num_items=None,
                      max_completion_length: int | None = None):
    """One loss from per-token losses (rows, T) under `mask` (rows, T).

    Args:
        per_token: tensor (rows, T).
        mask: tensor (rows, T). 1.0 on completion tokens that count.
        loss_type: str. "dapo": sum over the tokens / `num_items` (the completion tokens of
            the whole generation batch, so every token weighs the same across the batch's
            steps; DAPO, TRL's default); "bnpo": sum / this batch's tokens; "grpo": each
            sequence's mean, then the mean over sequences (the original GRPO); "dr_grpo":
            sum / (rows x max_completion_length) (Dr. GRPO: no length bias).
        num_items: scalar tensor or None. "dapo"'s divisor (defaults to this batch's tokens).
        max_completion_length: int or None. "dr_grpo"'s fixed length.
    """
    total = ops.sum(per_token * mask)
    tokens = ops.maximum(ops.sum(mask), 1.0)
    if loss_type == "dapo":
        return total / (tokens if num_items is None else ops.maximum(num_items, 1.0))
    if loss_type == "bnpo":
        return total / tokens
    if loss_type == "grpo":
        per_row = ops.sum(per_token * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)
        return ops.mean(per_row)
    if loss_type == "dr_grpo":
        rows = ops.cast(ops.shape(per_token)[0], "float32")
        return total / (rows * float(max_completion_length))
    raise ValueError(f"Unknown loss_type {loss_type!r}. Valid: {list(LOSS_TYPES)}")


__all__ = [
    "LOSS_TYPES",
    "nanstd",
    "SCALE_REWARDS",
    "clip_flags",
    "clipped_surrogate",
    "get_advantages",
    "group_normalized",
    "k3_kl",
    "leave_one_out",
    "reduce_token_loss",
]
