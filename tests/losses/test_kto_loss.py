"""kzoo's KTO-family losses against TRL's `KTOTrainer._compute_loss` (trl==1.16.0, which has no
standalone `kto_loss`): the trainer's own loss code runs on a stand-in `self` and a stand-in
model whose per-token log-probs are the random sequence log-probs under test, with precomputed
reference log-probs, so everything between the log-probs and the loss is TRL's."""

import collections
import math
import types

import keras
import numpy as np
import pytest
from keras import ops

from kzoo import losses
from kzoo.losses.kto import apo_zero_unpaired, kto_unweighted, uses_kl, weight_advice
from tests.helpers import value_and_grads

torch = pytest.importorskip("torch")
kto_trainer = pytest.importorskip("trl.trainer.kto_trainer")


class _Accelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):  # one process
        return x

    def unwrap_model(self, model):
        return model


def _stand_in_model(table):
    """A model whose row r scores one token with log-prob table[input_ids[r, 0]]."""

    def model(input_ids=None, **_):
        logps = table[input_ids[:, 0]][:, None]  # (rows, 1): the one scored position
        zeros = torch.zeros_like(logps)
        return types.SimpleNamespace(log_probs=logps, entropy=zeros, mean_logits=zeros)

    model.training = True
    return model


def trl_kto(policy, reference, policy_kl, reference_kl, labels, beta, desirable_weight,
            undesirable_weight, loss_type):
    """(loss, d loss / d policy log-probs, TRL's logged metrics)."""
    n = len(labels)
    table = torch.tensor(np.concatenate([policy, policy_kl]), dtype=torch.float64,
                         requires_grad=True)
    model = _stand_in_model(table)
    trainer = types.SimpleNamespace(
        model=model, accelerator=_Accelerator(), aux_loss_enabled=False,
        precompute_ref_logps=True, calculate_KL=loss_type != "apo_zero_unpaired",
        loss_type=loss_type, beta=beta, desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight, _metrics={"train": collections.defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    trainer._compute_kl_logps = types.MethodType(kto_trainer.KTOTrainer._compute_kl_logps,
                                                 trainer)
    ids = torch.arange(n)[:, None].repeat(1, 2)  # (n, 2): row r reads table[r]
    ones = torch.ones_like(ids)
    batch = {"input_ids": ids, "attention_mask": ones, "completion_mask": ones,
             "KL_input_ids": ids + n, "KL_attention_mask": ones, "KL_completion_mask": ones,
             "label": torch.tensor(labels),
             "ref_logps": torch.tensor(reference, dtype=torch.float64),
             "ref_KL_logps": torch.tensor(reference_kl, dtype=torch.float64)}
    loss = kto_trainer.KTOTrainer._compute_loss(trainer, model, batch, False)
    loss.backward()
    return loss.item(), table.grad.numpy(), dict(trainer._metrics["train"])


def kzoo_kto(policy, reference, policy_kl, reference_kl, labels, beta, desirable_weight,
             undesirable_weight, loss_type):
    def loss_of(policy, policy_kl):
        kl = losses.kto_kl(policy_kl, reference_kl)
        per_row = losses.kto_loss(policy - ops.convert_to_tensor(reference, "float32"), labels,
                                  kl, beta, desirable_weight, undesirable_weight, loss_type)
        return ops.mean(per_row)

    loss, (grad, kl_grad) = value_and_grads(loss_of, policy, policy_kl)
    return loss, grad, kl_grad, float(losses.kto_kl(np.asarray(policy_kl, "float32"),
                                                   np.asarray(reference_kl, "float32")))


def _case(seed, n, kl_shift, labels=None):
    rng = np.random.default_rng(seed)
    draw = lambda: rng.normal(-20.0, 4.0, n)  # noqa: E731  summed log-probs of a completion
    reference_kl = draw()
    labels = list(rng.random(n) < 0.5) if labels is None else labels
    return draw(), draw(), reference_kl + kl_shift + rng.normal(0, 1, n), reference_kl, labels


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize("seed, n, kl_shift, beta, weights", [
    (0, 8, 0.7, 0.1, (1.0, 1.0)),      # KL point above 0
    (1, 16, -2.0, 0.5, (1.0, 1.33)),   # mean KL log-ratio below 0: clamped to 0
    (2, 5, 3.0, 2.0, (0.75, 1.0)),
    (3, 32, 0.6, 0.05, (2.0, 0.5)),
])
def test_kto_loss_matches_trl(loss_type, seed, n, kl_shift, beta, weights):
    case = _case(seed, n, kl_shift)
    args = (*case, beta, *weights, loss_type)
    loss, grad, metrics = trl_kto(*args)
    ours, our_grad, kl_grad, kl = kzoo_kto(*args)
    assert ours == pytest.approx(loss, abs=1e-6)
    np.testing.assert_allclose(our_grad, grad[:n], atol=1e-6)
    if loss_type == "kto":
        assert kl == pytest.approx(metrics["kl"][0], abs=1e-5)
        assert (kl == 0.0) == (kl_shift < 0)  # the clamp
    # No gradient reaches the KL rows, in TRL (no_grad) or in kzoo (stop_gradient).
    assert not grad[n:].any()
    assert kl_grad is None or not np.asarray(kl_grad).any()
    rewards = beta * (case[0] - case[1])
    up = np.asarray(case[4])
    assert np.mean(rewards[up]) == pytest.approx(metrics["rewards/chosen"][0], abs=1e-9)


@pytest.mark.parametrize("label", [True, False])
def test_one_sided_batch_matches_trl(label):
    case = _case(4, 6, 0.5, labels=[label] * 6)
    args = (*case, 0.1, 1.0, 1.0, "kto")
    loss, grad, _ = trl_kto(*args)
    ours, our_grad, _, _ = kzoo_kto(*args)
    assert ours == pytest.approx(loss, abs=1e-6)
    np.testing.assert_allclose(our_grad, grad[:6], atol=1e-6)


def test_values_by_hand():
    s = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    got = np.asarray(losses.kto_loss([1.0, 1.0], [True, False], 0.25, beta=2.0,
                                     undesirable_weight=3.0))
    np.testing.assert_allclose(got, [1 - s(2 * 0.75), 3 * (1 - s(2 * -0.75))], rtol=1e-6)
    np.testing.assert_allclose(apo_zero_unpaired([1.0, 1.0], [True, False], beta=2.0),
                               [1 - s(2.0), s(2.0)], rtol=1e-6)
    np.testing.assert_allclose(kto_unweighted([0.0], [True], 0.0), [0.5])
    assert float(losses.kto_kl([-1.0, -3.0], [-2.0, -1.0])) == 0.0  # mean -0.5, clamped
    assert float(losses.kto_kl([-1.0, -2.0], [-2.0, -2.5])) == pytest.approx(0.75)


def test_registry():
    assert losses.list_unpaired_losses() == ["apo_zero_unpaired", "kto"]
    assert losses.get_unpaired("kto") is kto_unweighted
    assert uses_kl("kto") and not uses_kl("apo_zero_unpaired")
    assert "kto" not in losses.list_losses()  # paired and unpaired losses stay apart


@pytest.mark.parametrize("kwargs, match", [
    ({"loss_type": "kto2"}, r"Unknown unpaired \(KTO\) loss: 'kto2'. Valid names: "
                            r"\['apo_zero_unpaired', 'kto'\]"),
    ({"beta": 0.0}, "`beta` must be a positive number. Received: beta=0.0"),
    ({"desirable_weight": -1.0}, "desirable_weight=-1.0"),
    ({"undesirable_weight": True}, "undesirable_weight=True"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.kto_loss([0.0], [True], 0.0, **kwargs)


def test_weight_advice():
    assert weight_advice(100, 100) is None
    assert weight_advice(100, 120, desirable_weight=1.33) is None  # 1.33*100/120 in [1, 4/3]
    message = weight_advice(100, 300)
    assert "desirable_weight in [3, 4]" in message and "undesirable_weight in [0.25, 0.333]" \
        in message
    assert "no undesirable examples" in weight_advice(5, 0)
    assert "no desirable examples" in weight_advice(0, 5)


def test_defaults_are_trls_kto_config():
    # kto_loss's defaults are TRL's KTOConfig defaults (beta 0.1, both weights 1, loss "kto").
    import dataclasses

    from trl.trainer.kto_config import KTOConfig

    trl = {f.name: f.default for f in dataclasses.fields(KTOConfig)}
    logratios, labels = np.array([0.7, -1.3, 2.1], "float32"), [True, False, False]
    got = np.asarray(losses.kto_loss(logratios, labels, 0.2))
    want = np.asarray(losses.kto_loss(logratios, labels, 0.2, beta=trl["beta"],
                                      desirable_weight=trl["desirable_weight"],
                                      undesirable_weight=trl["undesirable_weight"],
                                      loss_type=trl["loss_type"]))
    np.testing.assert_array_equal(got, want)
    s = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    np.testing.assert_allclose(got, [1 - s(0.1 * 0.5), 1 - s(0.1 * 1.5), 1 - s(0.1 * -1.9)],
                               rtol=1e-6)


@pytest.mark.parametrize("floatx", ["float16", "bfloat16"])
def test_arithmetic_is_float32_whatever_the_default_float(floatx):
    # Summed log-probs are around -20, where float16 steps by 1/64: the KL point and the
    # log-ratios must not be rounded to the default float before the subtraction.
    policy_kl = np.array([-20.123457, -18.654321], "float32")
    reference_kl = np.array([-20.101, -18.6], "float32")
    logratios = np.array([0.0123457, -0.0234567], "float32")
    old = keras.config.floatx()
    keras.config.set_floatx(floatx)
    try:
        kl = losses.kto_kl(policy_kl, reference_kl)
        kl_of_flipped = losses.kto_kl(reference_kl, policy_kl)
        per_row = losses.kto_loss(logratios, [True, False], 0.0, beta=1.0,
                                  undesirable_weight=1.33)
    finally:
        keras.config.set_floatx(old)
    want = np.mean(reference_kl.astype("float64") - policy_kl.astype("float64"))
    assert keras.backend.standardize_dtype(per_row.dtype) == "float32"
    assert float(kl) == 0.0  # the mean log-ratio is negative: clamped
    assert float(kl_of_flipped) == pytest.approx(want, rel=1e-5)
    s = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    # 1.33 in float16 is 1.3301, 4e-4 off.
    np.testing.assert_allclose(np.asarray(per_row),
                               [1 - s(0.0123457), 1.33 * (1 - s(0.0234567))], rtol=1e-6)


def test_register_unpaired_adds_a_loss_once():
    from kzoo.losses import kto

    @kto.register_unpaired("test_only_hinge")
    def hinge(logratios, labels, kl, beta):
        return ops.relu(1.0 - beta * ops.convert_to_tensor(logratios, "float32"))

    @kto.register_unpaired("test_only_no_kl", uses_kl=False)
    def no_kl(logratios, labels, kl, beta):
        return logratios

    try:
        assert losses.get_unpaired("test_only_hinge") is hinge
        assert uses_kl("test_only_hinge") and not uses_kl("test_only_no_kl")  # default: uses KL
        np.testing.assert_allclose(losses.kto_loss([0.5], [True], 0.0, beta=1.0,
                                                   loss_type="test_only_hinge"), [0.5])
        with pytest.raises(ValueError, match="An unpaired loss named 'test_only_hinge' is "
                                             "already registered"):
            kto.register_unpaired("test_only_hinge")(no_kl)
        assert losses.get_unpaired("test_only_hinge") is hinge  # the first one is kept
    finally:
        for name in ("test_only_hinge", "test_only_no_kl"):
            kto._REGISTRY.pop(name, None)
            kto._USES_KL.discard(name)
    assert losses.list_unpaired_losses() == ["apo_zero_unpaired", "kto"]


def test_weight_advice_bounds_and_suggestions():
    # The paper's range [1, 4/3] is closed at both ends.
    assert weight_advice(100, 200, desirable_weight=2.0) is None  # ratio exactly 1
    assert weight_advice(4, 3) is None  # ratio exactly 4/3
    assert weight_advice(3, 2) is not None  # 1.5: above 4/3
    assert weight_advice(99, 100) is not None  # 0.99: below 1
    # With both weights set, the suggested ranges are where the ratio lands in [1, 4/3].
    message = weight_advice(100, 300, desirable_weight=2.0, undesirable_weight=2.0)
    assert "desirable_weight in [6, 8]" in message
    assert "undesirable_weight in [0.5, 0.667]" in message
    for desirable in (6.0, 8.0):
        assert weight_advice(100, 300, desirable, 2.0) is None
    for undesirable in (0.5, 2 / 3):
        assert weight_advice(100, 300, 2.0, undesirable) is None
