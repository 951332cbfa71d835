"""DPO's numbers recomputed in NumPy from the models' logits: sequence log-probs (summed and
length-normalised), the loss and metrics of a step, dropout in the policy only, batch-weighted
epoch metrics, and the NaN guard's snapshots."""

import math

import keras
import numpy as np
import pytest

from kzoo.alignment.dpo import (
    DPOModel,
    compute_reference_logps,
    frozen_copy,
    pair_logps,
    sequence_logps,
)
from kzoo.data.preference import preference_dataset
from kzoo.models import CausalLM
from kzoo.training.guard import NaNGuard

TINY = dict(vocab_size=16, num_layers=1, num_heads=2, hidden_dim=16, max_sequence_length=16)


def tiny_model(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return CausalLM(**{**TINY, **overrides})


def pairs(n=6, length=10, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, 2, length), "float32")
    for i in range(n):  # responses of different lengths, one of a single token
        start = 3 + i % 4 if i else length - 1
        mask[i, :, start:] = 1.0
    return {"token_ids": rng.integers(0, TINY["vocab_size"], (n, 2, length)).astype("int32"),
            "loss_mask": mask}


def np_sequence_logps(model, ids, mask, average=False):
    logits = np.asarray(model(ids[:, :-1]), "float64")
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    total = (picked * mask[:, 1:]).sum(-1)
    return total / np.maximum(mask[:, 1:].sum(-1), 1.0) if average else total


@pytest.mark.parametrize("average", [False, True])
def test_sequence_and_pair_logps_match_numpy(average):
    model = tiny_model()
    data = pairs()
    ids, mask = data["token_ids"].reshape(-1, 10), data["loss_mask"].reshape(-1, 10)
    mask[0] = 0.0  # no response token at all: 0, not NaN, when averaged
    expected = np_sequence_logps(model, ids, mask, average)
    np.testing.assert_allclose(sequence_logps(model, ids, mask, average=average), expected,
                               rtol=1e-5, atol=1e-6)
    got = np.asarray(pair_logps(model, data["token_ids"], mask.reshape(6, 2, 10),
                                average=average))
    np.testing.assert_allclose(got, expected.reshape(6, 2), rtol=1e-5, atol=1e-6)
    reference = compute_reference_logps(model, {"token_ids": data["token_ids"],
                                                "loss_mask": mask.reshape(6, 2, 10)},
                                        batch_size=4, average=average)
    assert reference.dtype == np.float32 and reference.shape == (6, 2)
    np.testing.assert_allclose(reference, expected.reshape(6, 2), rtol=1e-5, atol=1e-6)


def test_compute_reference_logps_of_no_pairs():
    model = tiny_model()
    empty = {"token_ids": np.zeros((0, 2, 10), "int32"), "loss_mask": np.zeros((0, 2, 10))}
    out = compute_reference_logps(model, empty)
    assert out.shape == (0, 2) and out.dtype == np.float32


def test_frozen_copy_is_an_independent_frozen_twin():
    policy = tiny_model()
    copy = frozen_copy(policy)
    assert copy.trainable is False and policy.trainable is True
    strip = lambda config: {k: v for k, v in config.items() if k != "trainable"}  # noqa: E731
    assert strip(copy.get_config()) == strip(policy.get_config())
    ids = np.array([[1, 2, 3, 4]])
    np.testing.assert_array_equal(np.asarray(copy(ids)), np.asarray(policy(ids)))
    policy.set_weights([w + 1.0 for w in policy.get_weights()])
    assert not np.allclose(np.asarray(copy(ids)), np.asarray(policy(ids)))


def _dpo(policy, reference, **kwargs):
    dpo = DPOModel(policy, reference, **kwargs)
    dpo.compile(optimizer=keras.optimizers.SGD(0.0))  # a step that changes nothing
    return dpo


@pytest.mark.parametrize("loss, eps", [("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0),
                                       ("robust", 0.2)])
def test_step_logs_match_numpy(loss, eps):
    """One evaluation over 6 pairs in batches of 4 and 2: each metric is the mean over pairs."""
    from kzoo import losses

    policy, reference = tiny_model(0), tiny_model(1)
    data = pairs()
    dpo = _dpo(policy, reference, loss=loss, beta=0.4, label_smoothing=eps,
               average_log_prob=loss == "ipo")
    logs = dpo.evaluate(preference_dataset({**data, "lengths": np.full((6, 2), 10)}, 4,
                                           shuffle=False), return_dict=True, verbose=0)
    average = loss == "ipo"
    flat = lambda m: np_sequence_logps(m, data["token_ids"].reshape(-1, 10),  # noqa: E731
                                       data["loss_mask"].reshape(-1, 10), average).reshape(6, 2)
    pol, ref = flat(policy), flat(reference)
    rewards = 0.4 * (pol - ref)
    per_pair = np.asarray(losses.get(loss)(pol[:, 0] - ref[:, 0], pol[:, 1] - ref[:, 1], 0.4,
                                           eps))
    expected = {"loss": per_pair.mean(), "rewards/chosen": rewards[:, 0].mean(),
                "rewards/rejected": rewards[:, 1].mean(),
                "rewards/margin": (rewards[:, 0] - rewards[:, 1]).mean(),
                "rewards/accuracy": (rewards[:, 0] > rewards[:, 1]).mean(),
                "logps/chosen": pol[:, 0].mean(), "logps/rejected": pol[:, 1].mean()}
    for name, value in expected.items():
        np.testing.assert_allclose(logs[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_ties_are_not_counted_as_accurate():
    policy = tiny_model()
    data = pairs(4)
    dpo = _dpo(policy, frozen_copy(policy))
    logs = dpo.evaluate(preference_dataset({**data, "lengths": np.full((4, 2), 10)}, 4,
                                           shuffle=False), return_dict=True, verbose=0)
    assert logs["rewards/accuracy"] == 0.0 and logs["rewards/margin"] == 0.0
    np.testing.assert_allclose(logs["loss"], math.log(2), rtol=1e-6)


def test_dropout_is_on_in_the_policy_step_only():
    """Policy and reference start equal: with dropout in training steps only, the first train
    step's loss moves off ln 2 while evaluation stays exactly at ln 2."""
    policy = tiny_model(dropout=0.5)
    data = {**pairs(4), "lengths": np.full((4, 2), 10)}
    dpo = _dpo(policy, frozen_copy(policy))
    dataset = preference_dataset(data, 4, shuffle=False)
    logs = dpo.evaluate(dataset, return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["loss"], math.log(2), rtol=1e-6)
    history = dpo.fit(dataset, epochs=1, verbose=0).history
    assert abs(history["loss"][0] - math.log(2)) > 1e-4
    # Precomputed reference log-probs are computed without dropout too.
    ref = compute_reference_logps(policy, data)
    np.testing.assert_allclose(ref, np_sequence_logps(
        policy, data["token_ids"].reshape(-1, 10), data["loss_mask"].reshape(-1, 10)
    ).reshape(4, 2), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dpo(data, training=False)), ref, rtol=1e-5)
    # Called directly, `training` reaches the model: dropout on, log-probs off the exact ones.
    ids, mask = data["token_ids"].reshape(-1, 10), data["loss_mask"].reshape(-1, 10)
    exact = np.asarray(sequence_logps(policy, ids, mask))
    assert not np.allclose(np.asarray(sequence_logps(policy, ids, mask, training=True)), exact,
                           atol=1e-4)


def test_train_step_follows_the_dpo_gradient():
    """One SGD step on one pair moves the policy the way -d loss / d theta says, and leaves the
    reference alone (finite differences on the loss along the step)."""
    policy = tiny_model()
    reference = frozen_copy(policy)
    data = {**pairs(2), "lengths": np.full((2, 2), 10)}
    dpo = DPOModel(policy, reference, beta=1.0)
    dpo.compile(optimizer=keras.optimizers.SGD(0.5))
    dataset = preference_dataset(data, 2, shuffle=False)
    before = dpo.evaluate(dataset, return_dict=True, verbose=0)["loss"]
    ref_weights = [w.copy() for w in reference.get_weights()]
    dpo.fit(dataset, epochs=1, verbose=0)
    after = dpo.evaluate(dataset, return_dict=True, verbose=0)["loss"]
    assert after < before - 1e-4
    for a, b in zip(ref_weights, reference.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_config_round_trip_without_reference_and_defaults():
    policy = tiny_model()
    dpo = DPOModel(policy)
    assert (dpo.reference, dpo.loss_name, dpo.beta, dpo.label_smoothing,
            dpo.average_log_prob) == (None, "sigmoid", 0.1, 0.0, False)
    restored = DPOModel.from_config(dpo.get_config())
    assert restored.reference is None and restored.policy.get_config() == policy.get_config()
    with pytest.raises(ValueError, match="beta"):
        DPOModel(policy, beta=True)
    with pytest.raises(ValueError, match="beta"):
        DPOModel(policy, beta=-0.1)


class _FakeModel:
    """Just what NaNGuard touches; `save_weights` writes the current weights as text."""

    def __init__(self):
        self.weights = [np.zeros(2)]
        self.stop_training = False

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]

    def save_weights(self, path):
        with open(path, "w") as f:
            f.write(str(float(self.weights[0][0])))


def test_nan_guard_restores_the_last_snapshot_and_keeps_the_good_checkpoint(tmp_path):
    model = _FakeModel()
    path = tmp_path / "good.weights.h5"
    guard = NaNGuard(model, checkpoint_path=str(path), snapshot_every=2)
    guard.set_model(model)
    guard.on_train_begin()
    for step in range(1, 4):  # weights 1, 2, 3; a snapshot after steps 2, 4, ...
        model.weights = [np.full(2, float(step))]
        guard.on_train_batch_end(step - 1, {"loss": 0.5, "other": float("nan")})  # unwatched
    guard.on_epoch_end(0)
    assert path.read_text() == "3.0" and not model.stop_training and guard.stopped_at is None
    guard.on_epoch_begin(1)
    model.weights = [np.full(2, 9.0)]
    guard.on_train_batch_end(7, {"loss": 0.4, "rewards/chosen": float("inf")})
    assert guard.stopped_at == (1, 7) and model.stop_training
    np.testing.assert_array_equal(model.weights[0], [2.0, 2.0])  # the step-2 snapshot
    guard.on_epoch_end(1)
    assert path.read_text() != "9.0"  # the bad epoch never reaches the checkpoint
    guard.on_train_begin()
    assert guard.stopped_at is None
    other = tmp_path / "other.weights.h5"
    NaNGuard(model).on_epoch_end(0)  # no checkpoint path: nothing written anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.weights.h5"]
    assert not other.exists()
