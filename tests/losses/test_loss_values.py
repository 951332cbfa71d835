"""Every preference and reward loss against its paper's formula, written in float64 NumPy, on
random log-ratios, several betas and label-smoothing rates, and at the edges of what each
accepts."""

import inspect

import keras
import numpy as np
import pytest

from kzoo import losses
from kzoo.alignment.dpo import DPOModel

RNG = np.random.default_rng(0)
CHOSEN = RNG.normal(size=16).astype("float32") * 3
REJECTED = RNG.normal(size=16).astype("float32") * 3


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def reference(name, chosen, rejected, beta, eps):
    h = chosen.astype("float64") - rejected.astype("float64")
    if name in ("sigmoid", "conservative"):  # DPO / cDPO (Mitchell 2023)
        return -(1 - eps) * np_log_sigmoid(beta * h) - eps * np_log_sigmoid(-beta * h)
    if name == "robust":  # rDPO (Chowdhury 2024), eq. (8)
        return (-(1 - eps) * np_log_sigmoid(beta * h) + eps * np_log_sigmoid(-beta * h)) / (
            1 - 2 * eps)
    if name == "ipo":  # IPO (Azar 2023): (h - 1/(2 tau))^2
        return (h - 1 / (2 * beta)) ** 2
    if name == "hinge":  # SLiC (Zhao 2023): max(0, delta - beta h) with delta = 1
        return np.maximum(0.0, 1 - beta * h)
    raise AssertionError(name)


CASES = [("sigmoid", 0.0), ("sigmoid", 0.5), ("conservative", 0.25), ("robust", 0.0),
         ("robust", 0.3), ("ipo", 0.0), ("hinge", 0.0)]


@pytest.mark.parametrize("name, eps", CASES)
@pytest.mark.parametrize("beta", [0.1, 0.7, 2.0])
def test_losses_match_their_formulas(name, eps, beta):
    out = losses.get(name)(CHOSEN, REJECTED, beta=beta, label_smoothing=eps)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(out), reference(name, CHOSEN, REJECTED, beta, eps),
                               rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name, eps", CASES)
def test_losses_are_exact_for_bfloat16_inputs(name, eps):
    """Casting happens before the subtraction: bfloat16 inputs lose only their own rounding."""
    c = keras.ops.cast(CHOSEN, "bfloat16")
    r = keras.ops.cast(REJECTED, "bfloat16")
    expected = reference(name, np.asarray(c, "float32"), np.asarray(r, "float32"), 0.5, eps)
    out = losses.get(name)(c, r, beta=0.5, label_smoothing=eps)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(out), expected, rtol=2e-5, atol=2e-6)


def test_default_beta_is_the_dpo_models():
    """Called without `beta`, every loss uses the same default as `DPOModel` (0.1, the DPO
    paper's)."""
    default = inspect.signature(DPOModel).parameters["beta"].default
    assert default == 0.1
    for name in losses.list_losses():
        np.testing.assert_allclose(np.asarray(losses.get(name)(CHOSEN, REJECTED)),
                                   reference(name, CHOSEN, REJECTED, default, 0.0), rtol=2e-5,
                                   atol=2e-6)


@pytest.mark.parametrize("name, eps, ok", [
    ("sigmoid", 0.5, True), ("sigmoid", 0.0, True), ("sigmoid", -1e-6, False),
    ("sigmoid", 0.5001, False), ("robust", 0.4999, True), ("robust", 0.5, False),
    ("robust", -1e-6, False), ("ipo", 1e-6, False), ("hinge", 1e-6, False),
    ("ipo", 0.0, True), ("hinge", 0.0, True),
])
def test_label_smoothing_edges(name, eps, ok):
    fn = losses.get(name)
    if ok:
        assert np.isfinite(np.asarray(fn(CHOSEN, REJECTED, beta=0.5, label_smoothing=eps))).all()
    else:
        with pytest.raises(ValueError, match="label_smoothing"):
            fn(CHOSEN, REJECTED, beta=0.5, label_smoothing=eps)


def test_sigmoid_loss_is_stable_for_large_gaps():
    big = np.array([200.0, -200.0], "float32")
    out = np.asarray(losses.sigmoid_loss(big, -big, beta=1.0))
    np.testing.assert_allclose(out, [0.0, 400.0], atol=1e-4)
    assert np.isfinite(out).all()


def test_register_adds_a_loss_that_get_returns(monkeypatch):
    from kzoo.losses import preference

    monkeypatch.setattr(preference, "_REGISTRY", dict(preference._REGISTRY))  # undone after

    def my_loss(chosen, rejected, beta=0.1, label_smoothing=0.0):
        return chosen - rejected

    assert losses.register("test_loss_values_mine")(my_loss) is my_loss
    assert losses.get("test_loss_values_mine") is my_loss
    assert "test_loss_values_mine" in losses.list_losses()
    assert losses.get("conservative") is losses.get("sigmoid")


def test_bradley_terry_matches_its_formula_per_pair_and_reduced():
    scores = RNG.normal(size=(10, 2)).astype("float32") * 2
    gap = scores[:, 0].astype("float64") - scores[:, 1]
    for margin in (0.0, 0.8):
        per_pair = -np_log_sigmoid(gap - margin)
        loss = losses.BradleyTerryLoss(margin=margin, reduction=None)
        np.testing.assert_allclose(np.asarray(loss(np.zeros(10), scores)), per_pair, rtol=1e-5)
        np.testing.assert_allclose(float(losses.BradleyTerryLoss(margin=margin)(
            np.zeros(10), scores)), per_pair.mean(), rtol=1e-5)
    assert losses.BradleyTerryLoss().margin == 0.0
    assert losses.BradleyTerryLoss().get_config()["margin"] == 0.0
    bf16 = keras.ops.cast(scores, "bfloat16")
    out = losses.BradleyTerryLoss(reduction=None)(np.zeros(10), bf16)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_pairwise_accuracy_counts_ties_as_wrong():
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, -3.0]], "float32")
    np.testing.assert_array_equal(np.asarray(losses.pairwise_accuracy(None, scores)),
                                  [1.0, 0.0, 0.0, 1.0])


def test_register_records_whether_a_loss_is_length_normalized(monkeypatch):
    from kzoo.losses import preference

    monkeypatch.setattr(preference, "_REGISTRY", dict(preference._REGISTRY))  # undone after
    monkeypatch.setattr(preference, "_LENGTH_NORMALIZED", set(preference._LENGTH_NORMALIZED))
    losses.register("test_loss_values_summed")(lambda c, r, beta=0.1, label_smoothing=0.0: c)
    losses.register("test_loss_values_per_token", length_normalized=True)(
        lambda c, r, beta=0.1, label_smoothing=0.0: c)
    assert not losses.length_normalized("test_loss_values_summed")  # the default
    assert losses.length_normalized("test_loss_values_per_token")


@pytest.mark.parametrize("name, eps, allowed", [("sigmoid", 0.6, r"\[0, 0\.5\]"),
                                                ("robust", 0.5, r"\[0, 0\.5\)")])
def test_label_smoothing_error_names_the_allowed_range(name, eps, allowed):
    with pytest.raises(ValueError, match=rf"`label_smoothing` must be in {allowed}\. Received"):
        losses.get(name)(CHOSEN, REJECTED, beta=0.5, label_smoothing=eps)


def test_preference_losses_take_the_gap_in_float32_whatever_the_floatx():
    # A bfloat16 floatx (mixed-precision training) must not round the log-ratios before the
    # gap: bfloat16(1000.1) is 1000, which would make the gap 0.
    chosen, rejected = np.array([1000.125], "float32"), np.array([1000.0], "float32")
    old = keras.config.floatx()
    keras.config.set_floatx("bfloat16")
    try:
        out = np.asarray(losses.get("sigmoid")(chosen, rejected, beta=1.0))
        out_swapped = np.asarray(losses.get("sigmoid")(rejected, chosen, beta=1.0))
    finally:
        keras.config.set_floatx(old)
    np.testing.assert_allclose(out, -np_log_sigmoid(0.125), rtol=1e-5)
    np.testing.assert_allclose(out_swapped, -np_log_sigmoid(-0.125), rtol=1e-5)
