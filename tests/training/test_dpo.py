import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kzoo.alignment.dpo import (
    METRIC_NAMES,
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


def tiny_model(seed: int = 0, **overrides) -> CausalLM:
    keras.utils.set_random_seed(seed)
    return CausalLM(**{**TINY, **overrides})


def random_pairs(n: int = 8, length: int = 12, prompt: int = 4, seed: int = 0) -> dict:
    """(n, 2, length) random token pairs whose last `length - prompt` tokens are the response."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, 2, length), "float32")
    mask[:, :, prompt:] = 1.0
    return {
        "token_ids": rng.integers(0, TINY["vocab_size"], (n, 2, length)).astype("int32"),
        "loss_mask": mask,
        "lengths": np.full((n, 2), length, "int32"),
    }


def _fit(dpo, arrays, batch_size=4, epochs=1, **kwargs):
    ds = preference_dataset(arrays, batch_size, shuffle=False)
    return dpo.fit(ds, epochs=epochs, verbose=0, shuffle=False, **kwargs).history


def test_sequence_logps_matches_numpy_log_softmax():
    model = tiny_model()
    ids = np.array([[3, 5, 7, 9, 2]], "int32")
    mask = np.array([[0, 0, 1, 1, 0]], "float32")  # score tokens 7 and 9 only
    logits = np.asarray(model(ids[:, :-1]), "float64")[0]  # (4, vocab)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = logp[1, 7] + logp[2, 9]  # logits at position t predict token t + 1
    got = float(sequence_logps(model, ids, mask)[0])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    avg = float(sequence_logps(model, ids, mask, average=True)[0])
    np.testing.assert_allclose(avg, expected / 2, rtol=1e-5)


@pytest.mark.parametrize("loss, smoothing", [("sigmoid", 0.0), ("conservative", 0.2),
                                             ("robust", 0.2)])
def test_first_step_loss_is_ln2(loss, smoothing):
    policy = tiny_model()
    dpo = DPOModel(policy, frozen_copy(policy), loss=loss, beta=0.1, label_smoothing=smoothing)
    dpo.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = _fit(dpo, random_pairs(4), batch_size=4)
    np.testing.assert_allclose(history["loss"][0], math.log(2), rtol=1e-6)
    np.testing.assert_allclose(history["rewards/margin"][0], 0.0, atol=1e-6)


def test_every_trainable_weight_changes_and_reference_does_not():
    policy = tiny_model()
    reference = frozen_copy(policy)
    dpo = DPOModel(policy, reference)
    dpo.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [v.numpy().copy() for v in policy.trainable_variables]
    ref_before = [v.numpy().copy() for v in reference.weights]
    _fit(dpo, random_pairs(4), batch_size=4)
    assert len(before) == len(policy.trainable_variables) > 0
    for old, var in zip(before, policy.trainable_variables):
        assert not np.allclose(old, var.numpy()), f"{var.path} did not change"
    for old, var in zip(ref_before, reference.weights):
        np.testing.assert_array_equal(old, var.numpy(), err_msg=var.path)
    assert dpo.trainable_variables == policy.trainable_variables


def test_logged_metrics_match_their_definitions():
    policy, reference = tiny_model(0), tiny_model(1)  # different weights: non-zero rewards
    beta = 0.5
    arrays = random_pairs(6)
    dpo = DPOModel(policy, reference, beta=beta)
    dpo.compile(optimizer="sgd")
    logs = dpo.evaluate(preference_dataset(arrays, 6, shuffle=False), return_dict=True, verbose=0)
    assert set(logs) == set(METRIC_NAMES)
    pol = np.asarray(pair_logps(policy, arrays["token_ids"], arrays["loss_mask"]))
    ref = np.asarray(pair_logps(reference, arrays["token_ids"], arrays["loss_mask"]))
    rewards = beta * (pol - ref)  # (pairs, 2)
    h = rewards[:, 0] - rewards[:, 1]
    expected = {
        "loss": np.mean(np.log1p(np.exp(-h))),
        "rewards/chosen": rewards[:, 0].mean(),
        "rewards/rejected": rewards[:, 1].mean(),
        "rewards/margin": h.mean(),
        "rewards/accuracy": (h > 0).mean(),
        "logps/chosen": pol[:, 0].mean(),
        "logps/rejected": pol[:, 1].mean(),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(logs[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_precomputed_reference_logps_give_the_same_training():
    arrays = random_pairs(8)
    histories, weights = [], []
    for precomputed in (False, True):
        policy = tiny_model(0)
        reference = tiny_model(1)
        data = dict(arrays)
        if precomputed:
            data["reference_logps"] = compute_reference_logps(reference, arrays, batch_size=3)
            reference = None
        dpo = DPOModel(policy, reference, beta=0.3)
        dpo.compile(optimizer=keras.optimizers.SGD(0.1))
        histories.append(_fit(dpo, data, batch_size=4, epochs=2))
        weights.append([v.numpy() for v in policy.trainable_variables])
    for name in METRIC_NAMES:
        np.testing.assert_allclose(histories[0][name], histories[1][name], rtol=1e-5, atol=1e-6)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mixed_bfloat16_policy_trains_with_float32_logps():
    policy = tiny_model(0, dtype="mixed_bfloat16")
    reference = frozen_copy(policy)
    assert reference.compute_dtype == "bfloat16"
    arrays = random_pairs(4)
    logps = pair_logps(policy, arrays["token_ids"], arrays["loss_mask"])
    assert logps.dtype == tf.float32
    # float32 twin with the same weights: bfloat16 matmuls move the log-probs only slightly.
    twin = tiny_model(0)
    twin.set_weights(policy.get_weights())
    ref32 = np.asarray(pair_logps(twin, arrays["token_ids"], arrays["loss_mask"]))
    np.testing.assert_allclose(np.asarray(logps), ref32, rtol=2e-2)
    dpo = DPOModel(policy, reference)
    dpo.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [v.numpy().copy() for v in policy.trainable_variables]
    history = _fit(dpo, arrays, batch_size=4, epochs=2)
    np.testing.assert_allclose(history["loss"][0], math.log(2), rtol=1e-6)
    assert all(math.isfinite(v) for name in METRIC_NAMES for v in history[name])
    assert all(v.dtype == "float32" for v in policy.trainable_variables)
    for old, var in zip(before, policy.trainable_variables):
        assert not np.allclose(old, var.numpy()), var.path


def test_dpo_learns_to_prefer_chosen():
    arrays = random_pairs(8)
    policy = tiny_model()
    dpo = DPOModel(policy, frozen_copy(policy), beta=0.5)
    dpo.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = _fit(dpo, arrays, batch_size=8, epochs=15)
    assert history["loss"][-1] < 0.3 < math.log(2)
    assert history["rewards/accuracy"][-1] == 1.0


def test_missing_reference_logps_is_a_clear_error():
    dpo = DPOModel(tiny_model(), reference=None)
    dpo.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="reference_logps"):
        _fit(dpo, random_pairs(4))


@pytest.mark.parametrize("kwargs, match", [
    ({"loss": "nope"}, "Valid names"),
    ({"beta": 0.0}, "beta"),
    ({"loss": "ipo", "label_smoothing": 0.1}, "label_smoothing"),
    ({"loss": "robust", "label_smoothing": 0.5}, "label_smoothing"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPOModel(tiny_model(), None, **kwargs)


def test_nan_stops_training_and_keeps_the_last_good_weights(tmp_path):
    arrays = random_pairs(8)
    policy = tiny_model()
    arrays["reference_logps"] = compute_reference_logps(policy, arrays)
    arrays["reference_logps"][4:] = np.nan  # the second batch of 4 turns the loss NaN
    checkpoint = tmp_path / "policy.weights.h5"
    # A first fit on the good pairs only is checkpointed; the second fit hits the NaN batch.
    dpo = DPOModel(policy, None)
    dpo.compile(optimizer=keras.optimizers.Adam(1e-2))
    guard = NaNGuard(policy, checkpoint_path=str(checkpoint))
    good = {k: v[:4] for k, v in arrays.items()}
    _fit(dpo, good, batch_size=4, epochs=1, callbacks=[guard])
    after_good = [w.copy() for w in policy.get_weights()]
    assert checkpoint.is_file()
    history = _fit(dpo, arrays, batch_size=4, epochs=3, callbacks=[guard])
    assert guard.stopped_at == (0, 1)
    assert len(history["loss"]) == 1  # stopped in the first epoch of this fit
    # Restored: the weights after the good step of this fit, all finite.
    assert all(np.isfinite(w).all() for w in policy.get_weights())
    assert any(not np.allclose(a, b) for a, b in zip(after_good, policy.get_weights()))
    # The checkpoint on disk holds those restored weights: the last good step's, as the
    # recipe's message says (not the diverged ones, and newer than the last epoch's).
    loaded = tiny_model(5)
    loaded.load_weights(checkpoint)
    for a, b in zip(policy.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_config_json_round_trip():
    policy = tiny_model()
    dpo = DPOModel(policy, frozen_copy(policy), loss="hinge", beta=0.25, average_log_prob=True)
    config = json.loads(json.dumps(dpo.get_config()))
    restored = DPOModel.from_config(config)
    assert (restored.loss_name, restored.beta, restored.average_log_prob) == ("hinge", 0.25, True)
    assert restored.policy.get_config() == policy.get_config()
    assert restored.reference.trainable is False
    assert json.loads(json.dumps(restored.get_config())) == config


def _token_logps(model, ids):
    """float64 log p(token t+1 | tokens <= t), (rows, L - 1), by a NumPy log-softmax."""
    logits = np.asarray(model(ids[:, :-1]), "float64")
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return np.take_along_axis(logp, ids[:, 1:, None].astype("int64"), axis=-1)[..., 0]


@pytest.mark.parametrize("average_log_prob", [False, True])
def test_ipo_on_long_responses_is_trl_ipo_on_per_token_mean_logratios(average_log_prob):
    """TRL's definition: losses = (logits - 1/(2 beta))^2 with logits the chosen minus the
    rejected log-ratio, each averaged over its response tokens."""
    long = dict(max_sequence_length=128)
    policy, reference = tiny_model(0, **long), tiny_model(1, **long)
    # Larger weights, sharper predictions: log-ratios of several nats per response.
    policy.set_weights([3 * w for w in policy.get_weights()])
    beta, pairs = 0.5, random_pairs(4, length=128, prompt=4)
    pairs["loss_mask"][1, 1, 100:] = 0.0  # rejected responses of other lengths
    pairs["loss_mask"][2, 0, 30:] = 0.0
    dpo = DPOModel(policy, reference, loss="ipo", beta=beta, average_log_prob=average_log_prob)
    dpo.compile(optimizer="sgd")
    got = dpo.evaluate(preference_dataset(pairs, 4, shuffle=False), return_dict=True,
                       verbose=0)["loss"]
    # The recipe's other path: reference log-probs precomputed in the same convention.
    precomputed = {**pairs, "reference_logps": compute_reference_logps(
        reference, pairs, average=average_log_prob)}
    dpo = DPOModel(policy, None, loss="ipo", beta=beta, average_log_prob=average_log_prob)
    dpo.compile(optimizer="sgd")
    got_precomputed = dpo.evaluate(preference_dataset(precomputed, 4, shuffle=False),
                                   return_dict=True, verbose=0)["loss"]

    ids = pairs["token_ids"].reshape(8, 128)
    mask = pairs["loss_mask"].reshape(8, 128)[:, 1:]
    logratio_sums = ((_token_logps(policy, ids) - _token_logps(reference, ids)) * mask).sum(-1)
    mean_logratios = (logratio_sums / mask.sum(-1)).reshape(4, 2)
    logits = mean_logratios[:, 0] - mean_logratios[:, 1]
    expected = np.mean((logits - 1 / (2 * beta)) ** 2)
    np.testing.assert_allclose([got, got_precomputed], [expected, expected], rtol=1e-4)
    summed = logratio_sums.reshape(4, 2)
    summed_loss = np.mean((summed[:, 0] - summed[:, 1] - 1 / (2 * beta)) ** 2)
    assert summed_loss > 10 * expected  # the conventions are far apart on these responses
