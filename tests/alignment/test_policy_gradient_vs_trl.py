"""GRPO's and RLOO's losses against TRL's own loss code (trl==1.16.0).

TRL's `GRPOTrainer._compute_loss` and `RLOOTrainer._compute_loss` run on a stand-in `self`
whose `_get_per_token_logps_and_entropies` returns the per-token log-probs under test, so
everything between the log-probs and the loss (ratio, clipping, KL, the loss_type reduction,
the logged clip ratios) is TRL's. kzoo's `objective` gets the same log-probs; the losses and
their gradients with respect to the log-probs must agree. The advantages are checked against
the formulas of TRL's `_generate_and_score_completions` (inline there, so not callable alone).
"""

import collections
import types

import numpy as np
import pytest
import tensorflow as tf

from kzoo.alignment.online import objective
from kzoo.losses import policy_gradient as pg

torch = pytest.importorskip("torch")
grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer")
rloo_trainer = pytest.importorskip("trl.trainer.rloo_trainer")

ROWS, T = 8, 5


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _case(seed):
    rng = np.random.default_rng(seed)
    logps = rng.normal(-1.5, 0.6, (ROWS, T))
    old = logps + rng.normal(0, 0.3, (ROWS, T))  # ratios well outside 1 +- 0.2 for some
    ref = logps + rng.normal(0, 0.2, (ROWS, T))
    mask = (rng.random((ROWS, T)) < 0.8).astype(np.float64)
    mask[:, 0] = 1.0
    advantages = rng.normal(0, 1, ROWS)
    return logps, old, ref, mask, advantages


def _trl_self(cls, logps_t, **attrs):
    def per_token(model, input_ids, attention_mask, logits_to_keep, compute_entropy=True,
                  compute_aux_loss=False, **_):
        return logps_t, torch.zeros_like(logps_t), None

    model = types.SimpleNamespace(training=True)
    trainer = types.SimpleNamespace(
        model=model, accelerator=_Accelerator(), aux_loss_enabled=False,
        _metrics={"train": collections.defaultdict(list)}, _entropy_bonus_enabled=False,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        importance_sampling_level="token", current_gradient_accumulation_steps=1,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None,
                                   steps_per_generation=1),
        **attrs)
    trainer._get_per_token_logps_and_entropies = per_token
    return trainer


def _inputs(mask, advantages, old, ref):
    ids = torch.zeros((ROWS, T), dtype=torch.long)
    return {"prompt_ids": ids[:, :1], "prompt_mask": torch.ones((ROWS, 1)),
            "completion_ids": ids, "completion_mask": torch.tensor(mask),
            "advantages": torch.tensor(advantages), "old_per_token_logps": torch.tensor(old),
            "old_logps": torch.tensor((old * mask).sum(-1)),
            "ref_per_token_logps": torch.tensor(ref),
            "num_items_in_batch": torch.tensor(mask.sum())}


def _kzoo(algorithm, logps, old, ref, mask, advantages, beta, eps, eps_high, loss_type):
    # kzoo's rows are prompt + completion: a 1-token prompt, then the T completion slots.
    completion_mask = np.concatenate([np.zeros((ROWS, 1)), mask], axis=1)
    x = tf.Variable(logps, dtype=tf.float64)
    inputs = {"completion_mask": completion_mask, "advantages": advantages,
              "old_logps": old, "ref_logps": ref if beta else None,
              "num_items": np.full(ROWS, mask.sum())}
    with tf.GradientTape() as tape:
        loss, values = objective(algorithm, tf.cast(x, tf.float32), tf.zeros_like(x, tf.float32),
                                 inputs, beta=beta, epsilon=eps, epsilon_high=eps_high,
                                 loss_type=loss_type, max_completion_length=T)
    return float(loss), tape.gradient(loss, x).numpy(), {k: float(v) for k, v in values.items()}


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_and_gradient_equal_trl(loss_type, beta):
    logps, old, ref, mask, advantages = _case(1)
    eps, eps_high = 0.2, 0.28
    logps_t = torch.tensor(logps, requires_grad=True)
    trainer = _trl_self(grpo_trainer.GRPOTrainer, logps_t, beta=beta, loss_type=loss_type,
                        epsilon_low=eps, epsilon_high=eps_high, max_completion_length=T)
    trl_loss = grpo_trainer.GRPOTrainer._compute_loss(trainer, trainer.model,
                                                      _inputs(mask, advantages, old, ref))
    trl_loss.backward()
    loss, grad, values = _kzoo("grpo", logps, old, ref, mask, advantages, beta, eps, eps_high,
                               loss_type)
    np.testing.assert_allclose(loss, trl_loss.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, logps_t.grad.numpy(), rtol=1e-4, atol=1e-6)
    metrics = trainer._metrics["train"]
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        np.testing.assert_allclose(values[name], metrics[name][0], atol=1e-6)
    assert values["clip_ratio/region_mean"] > 0  # the case does exercise clipping
    if beta:
        np.testing.assert_allclose(values["kl"], metrics["kl"][0], rtol=1e-5)


def test_rloo_loss_and_gradient_equal_trl():
    logps, old, ref, mask, advantages = _case(2)
    old = logps + np.random.default_rng(3).normal(0, 0.05, logps.shape)  # sequence ratios
    eps, eps_high = 0.2, 0.2
    logps_t = torch.tensor(logps, requires_grad=True)
    trainer = _trl_self(rloo_trainer.RLOOTrainer, logps_t, epsilon_low=eps, epsilon_high=eps_high)
    trl_loss = rloo_trainer.RLOOTrainer._compute_loss(trainer, trainer.model,
                                                      _inputs(mask, advantages, old, ref))
    trl_loss.backward()
    loss, grad, values = _kzoo("rloo", logps, old, ref, mask, advantages, 0.0, eps, eps_high,
                               "dapo")
    np.testing.assert_allclose(loss, trl_loss.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, logps_t.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(values["clip_ratio/region_mean"],
                               trainer._metrics["train"]["clip_ratio/region_mean"][0], atol=1e-6)


def _trl_group_advantages(rewards, g, scale):
    """TRL 1.16 `_generate_and_score_completions`, sum_then_normalize, in torch."""
    r = torch.tensor(rewards)
    mean = torch.nanmean(r.view(-1, g), dim=1).repeat_interleave(g)
    if scale == "batch":
        std = grpo_trainer.nanstd(r).expand_as(r)
    else:
        std = grpo_trainer.nanstd(r.view(-1, g), dim=1).repeat_interleave(g)
    adv = r - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0).numpy(), torch.isclose(std, torch.zeros_like(std))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_follow_trl(scale):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=16)
    rewards[8:12] = 1.0  # one group with equal rewards: zero std
    adv, zero = pg.group_normalized(rewards, 4, scale)
    want, want_zero = _trl_group_advantages(rewards, 4, scale)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)
    if scale != "batch":
        np.testing.assert_array_equal(zero, want_zero.numpy())
    assert zero[8:12].all() and not zero[:8].any()
    np.testing.assert_allclose(adv[8:12], 0.0, atol=1e-6)


def test_leave_one_out_follows_trl_and_skips_unscorable():
    rewards = np.array([1.0, 0.0, 0.0, 0.5, 2.0, np.nan, 1.0, 0.0])
    adv, zero = pg.leave_one_out(rewards, 4)
    # TRL: baseline = (nansum - r) / (scorable - 1), NaN rows get 0.
    assert adv[0] == pytest.approx(1.0 - (0.0 + 0.0 + 0.5) / 3, abs=1e-6)
    assert adv[4] == pytest.approx(2.0 - (1.0 + 0.0) / 2, abs=1e-6)
    assert adv[5] == 0.0
    assert not zero.any()
    np.testing.assert_allclose(adv[:4].sum(), 4 / 3 * (rewards[:4] - rewards[:4].mean()).sum(),
                               atol=1e-6)


def test_groups_must_be_whole():
    with pytest.raises(ValueError, match="groups of 3"):
        pg.group_normalized(np.zeros(8), 3)
