"""KTOModel's numbers recomputed in NumPy from the models' logits: the step's logged metrics,
the gradient step (the KL point carries no gradient), the three reference modes, the held-out
implied-reward accuracy against DPOModel's `rewards/accuracy`, and its bad inputs."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kzoo import losses
from kzoo.alignment.dpo import DPOModel, compute_reference_logps, frozen_copy, sequence_logps
from kzoo.alignment.kto import (
    KTOModel,
    compute_unpaired_reference_logps,
    implied_reward_accuracy,
)
from kzoo.data.preference import preference_dataset
from kzoo.data.unpaired import unpaired_dataset
from kzoo.models import CausalLM

TINY = dict(vocab_size=16, num_layers=1, num_heads=2, hidden_dim=16, max_sequence_length=16)
L = 10


def tiny_model(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return CausalLM(**{**TINY, **overrides})


def rows(n=6, seed=0, labels=None):
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, L), "float32")
    kl_mask = np.zeros((n, L), "float32")
    for i in range(n):  # completions of different lengths
        mask[i, 3 + i % 4:] = 1.0
        kl_mask[i, 2 + (i + 1) % 5:] = 1.0
    return {"token_ids": rng.integers(0, 16, (n, L)).astype("int32"), "loss_mask": mask,
            "labels": np.array(labels if labels is not None else [i % 3 != 0 for i in range(n)]),
            "kl_token_ids": rng.integers(0, 16, (n, L)).astype("int32"), "kl_loss_mask": kl_mask}


def np_logps(model, ids, mask):
    logits = np.asarray(model(ids[:, :-1]), "float64")
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    return (picked * mask[:, 1:]).sum(-1)


def np_kto(policy, reference, data, beta, dw, uw):
    """Per-row KTO losses, rewards and the KL point, from the paper's formula in NumPy."""
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    ratio = np_logps(policy, data["token_ids"], data["loss_mask"]) - np_logps(
        reference, data["token_ids"], data["loss_mask"])
    kl = max(0.0, np.mean(np_logps(policy, data["kl_token_ids"], data["kl_loss_mask"]) - np_logps(
        reference, data["kl_token_ids"], data["kl_loss_mask"])))
    up = data["labels"]
    losses = np.where(up, dw * (1 - sig(beta * (ratio - kl))), uw * (1 - sig(beta * (kl - ratio))))
    return losses, beta * ratio, kl


def _kto(policy, reference, lr=0.0, **kwargs):
    model = KTOModel(policy, reference, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(lr))
    return model


@pytest.mark.parametrize("beta, dw, uw", [(0.1, 1.0, 1.0), (2.0, 1.33, 0.7)])
def test_logged_metrics_match_numpy(beta, dw, uw):
    policy, reference = tiny_model(0), tiny_model(1)
    data = rows(6)
    model = _kto(policy, reference, beta=beta, desirable_weight=dw, undesirable_weight=uw)
    logs = model.evaluate(unpaired_dataset(data, 6), return_dict=True, verbose=0)
    losses, rewards, kl = np_kto(policy, reference, data, beta, dw, uw)
    assert kl > 0  # the two models differ enough for a KL point above the clamp
    pol = np_logps(policy, data["token_ids"], data["loss_mask"])
    up = data["labels"]
    expected = {"loss": losses.mean(), "kl": kl, "rewards/chosen": rewards[up].mean(),
                "rewards/rejected": rewards[~up].mean(), "logps/chosen": pol[up].mean(),
                "logps/rejected": pol[~up].mean()}
    for name, value in expected.items():
        np.testing.assert_allclose(logs[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_train_step_follows_the_gradient_with_a_constant_kl_point():
    """One SGD step equals theta - lr * d/d theta mean(KTO losses), the KL point held fixed: a
    KL point with a gradient would move the weights elsewhere."""
    policy, reference = tiny_model(0), tiny_model(1)
    data = rows(6)
    kl = losses.kto_kl(sequence_logps(policy, data["kl_token_ids"], data["kl_loss_mask"]),
                       sequence_logps(reference, data["kl_token_ids"], data["kl_loss_mask"]))
    ref = sequence_logps(reference, data["token_ids"], data["loss_mask"])
    with tf.GradientTape() as tape:
        ratio = sequence_logps(policy, data["token_ids"], data["loss_mask"]) - ref
        loss = tf.reduce_mean(losses.kto_loss(ratio, data["labels"], kl, 0.5))
    grads = tape.gradient(loss, policy.trainable_variables)
    expected = [v.numpy() - 0.3 * tf.convert_to_tensor(g).numpy()
                for v, g in zip(policy.trainable_variables, grads)]
    ref_weights = [w.copy() for w in reference.get_weights()]
    model = _kto(policy, reference, lr=0.3, beta=0.5)
    model.fit(unpaired_dataset(data, 6), epochs=1, verbose=0)
    for want, got in zip(expected, policy.trainable_variables):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)
    for a, b in zip(ref_weights, reference.get_weights()):
        np.testing.assert_array_equal(a, b)


def _train(mode, lora):
    """(per-epoch losses, per-epoch KL points, held-out rewards/chosen) of 2 epochs."""
    policy = tiny_model(0)
    start = frozen_copy(policy)
    if lora:
        policy.enable_lora(2)  # adapters start at zero: the base network is the reference
    batch = dict(rows(6, labels=[True] * 5 + [False]))  # most likelihoods rise: KL point > 0
    batch["kl_token_ids"] = np.roll(batch["token_ids"], 1, axis=0)
    reference = {"copy": start, "adapters_off": "adapters_off", "precomputed": None}[mode]
    if mode == "precomputed":
        batch.update(compute_unpaired_reference_logps(policy, batch, batch_size=4))
    model = _kto(policy, reference, lr=0.5, beta=1.0)
    ds = unpaired_dataset(batch, 3)
    history = model.fit(ds, epochs=2, verbose=0).history
    after = model.evaluate(ds, return_dict=True, verbose=0)
    return np.array([*history["loss"], *history["kl"], after["rewards/chosen"]])


@pytest.mark.parametrize("mode, lora", [("precomputed", False), ("adapters_off", True)])
def test_reference_modes_take_the_same_steps_as_a_frozen_copy(mode, lora):
    want = _train("copy", lora)
    assert want[-1] != 0.0 and want[2:4].max() > 0  # the policy moved; a KL point above 0
    np.testing.assert_allclose(_train(mode, lora), want, rtol=1e-5, atol=1e-6)


def test_first_step_from_the_reference_is_at_half():
    """At step 0 (policy == reference) every log-ratio and the KL point are 0: loss 0.5 x weight."""
    policy = tiny_model(0)
    data = rows(6)
    logs = _kto(policy, frozen_copy(policy), undesirable_weight=2.0).evaluate(
        unpaired_dataset(data, 6), return_dict=True, verbose=0)
    up = data["labels"].mean()
    np.testing.assert_allclose(logs["loss"], 0.5 * up + 1.0 * (1 - up), rtol=1e-6)
    assert logs["kl"] == 0.0 and logs["rewards/chosen"] == 0.0


def test_one_sided_batches_train_and_leave_the_other_metric_empty():
    policy, reference = tiny_model(0), tiny_model(1)
    data = rows(4, labels=[True] * 4)
    model = _kto(policy, reference, lr=0.1)
    history = model.fit(unpaired_dataset(data, 4), epochs=2, verbose=0).history
    assert history["loss"][1] < history["loss"][0]
    assert history["rewards/rejected"] == [0.0, 0.0]  # no undesirable row: nothing averaged


def test_apo_zero_unpaired_needs_no_kl_rows_but_kto_does():
    policy, reference = tiny_model(0), tiny_model(1)
    data = {k: v for k, v in rows(4).items() if not k.startswith("kl_")}
    logs = _kto(policy, reference, loss_type="apo_zero_unpaired", beta=0.5).evaluate(
        unpaired_dataset(data, 4), return_dict=True, verbose=0)
    ratio = np_logps(policy, data["token_ids"], data["loss_mask"]) - np_logps(
        reference, data["token_ids"], data["loss_mask"])
    s = 1 / (1 + np.exp(-0.5 * ratio))
    np.testing.assert_allclose(logs["loss"], np.where(data["labels"], 1 - s, s).mean(),
                               rtol=1e-5)
    assert logs["kl"] == 0.0
    with pytest.raises(ValueError, match="KTOModel needs 'kl_token_ids' in every batch .*"
                       "with_kl_rows"):
        _kto(policy, reference).evaluate(unpaired_dataset(data, 4), verbose=0)
    with pytest.raises(ValueError, match="needs 'reference_(kl_)?logps'.*"
                       "compute_unpaired_reference_logps"):
        _kto(policy, None).evaluate(unpaired_dataset(rows(4), 4), verbose=0)


def test_implied_reward_accuracy_matches_dpo_rewards_accuracy():
    rng = np.random.default_rng(3)
    mask = np.zeros((10, 2, L), "float32")
    mask[:, :, 4:] = 1.0
    pairs = {"token_ids": rng.integers(0, 16, (10, 2, L)).astype("int32"), "loss_mask": mask,
             "lengths": np.full((10, 2), L, "int32")}
    policy, reference = tiny_model(0), tiny_model(2)
    dpo = DPOModel(policy, reference, beta=0.3)
    dpo.compile(optimizer="sgd")
    want = dpo.evaluate(preference_dataset(pairs, 4, shuffle=False), return_dict=True,
                        verbose=0)
    got = implied_reward_accuracy(policy, reference, pairs, 0.3, batch_size=3)
    assert 0.0 < got["rewards/accuracy"] < 1.0  # a case where the comparison can fail
    for name in ("rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    pre = {**pairs, "reference_logps": compute_reference_logps(reference, pairs)}
    np.testing.assert_allclose(implied_reward_accuracy(policy, None, pre, 0.3)["rewards/margin"],
                               want["rewards/margin"], rtol=1e-4)
    with pytest.raises(ValueError, match="reference=None needs pairs\\['reference_logps'\\]"):
        implied_reward_accuracy(policy, None, pairs, 0.3)


def test_bad_arguments_and_config_round_trip():
    policy = tiny_model(0)
    with pytest.raises(ValueError, match="Unknown unpaired"):
        KTOModel(policy, loss_type="dpo")
    with pytest.raises(ValueError, match="undesirable_weight=0"):
        KTOModel(policy, undesirable_weight=0)
    with pytest.raises(ValueError, match="needs a policy with LoRA"):
        KTOModel(policy, reference="adapters_off")
    with pytest.raises(ValueError, match="Unknown `reference`: 'twin'"):
        KTOModel(policy, reference="twin")
    model = KTOModel(policy, None, beta=0.2, desirable_weight=1.5)
    restored = KTOModel.from_config(model.get_config())
    assert (restored.reference, restored.beta, restored.desirable_weight,
            restored.loss_type) == (None, 0.2, 1.5, "kto")
    assert math.isclose(restored.undesirable_weight, 1.0)
