"""The preference losses against values worked out by hand.

Pair A: chosen log-ratio 2.0, rejected 0.5 -> h = 1.5; with beta = 0.5 the logit is 0.75.
  softplus(-0.75) = log(1 + e^-0.75) = log(1.4723666) = 0.3868710
  softplus(+0.75) = 0.75 + 0.3868710                  = 1.1368710
Pair B: chosen -1.0, rejected 1.0 -> h = -2.0; logit -1.0.
  softplus(+1.0) = 1.3132617, softplus(-1.0) = 0.3132617
"""

import math

import numpy as np
import pytest

from kzoo import losses

CHOSEN = np.array([2.0, -1.0], "float32")
REJECTED = np.array([0.5, 1.0], "float32")


@pytest.mark.parametrize(
    "name, smoothing, expected",
    [
        # -log s(0.75) and -log s(-1.0)
        ("sigmoid", 0.0, [0.3868710, 1.3132617]),
        # 0.8 * 0.3868710 + 0.2 * 1.1368710 ; 0.8 * 1.3132617 + 0.2 * 0.3132617
        ("conservative", 0.2, [0.5368710, 1.1132617]),
        # (0.8 * 0.3868710 - 0.2 * 1.1368710) / 0.6 ; (0.8 * 1.3132617 - 0.2 * 0.3132617) / 0.6
        ("robust", 0.2, [0.1368710, 1.6465950]),
        # (1.5 - 1/(2*0.5))^2 ; (-2 - 1)^2
        ("ipo", 0.0, [0.25, 9.0]),
        # max(0, 1 - 0.75) ; max(0, 1 + 1)
        ("hinge", 0.0, [0.25, 2.0]),
    ],
)
def test_loss_matches_hand_computed_values(name, smoothing, expected):
    out = losses.get(name)(CHOSEN, REJECTED, beta=0.5, label_smoothing=smoothing)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_sigmoid_family_is_ln2_at_equal_logratios(smoothing):
    for name in ["sigmoid", "conservative", "robust"]:
        out = losses.get(name)(np.zeros(3), np.zeros(3), beta=0.1, label_smoothing=smoothing)
        np.testing.assert_allclose(np.asarray(out), [math.log(2)] * 3, rtol=1e-6)


def test_robust_without_smoothing_equals_sigmoid():
    a = losses.get("robust")(CHOSEN, REJECTED, beta=0.3)
    b = losses.get("sigmoid")(CHOSEN, REJECTED, beta=0.3)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_losses_are_float32_for_bfloat16_inputs():
    import keras

    c = keras.ops.cast(CHOSEN, "bfloat16")
    r = keras.ops.cast(REJECTED, "bfloat16")
    for name in losses.list_losses():
        out = losses.get(name)(c, r, beta=0.5)
        assert keras.backend.standardize_dtype(out.dtype) == "float32", name


def test_registry_lists_and_rejects_unknown_names():
    assert losses.list_losses() == ["conservative", "hinge", "ipo", "robust", "sigmoid"]
    with pytest.raises(ValueError, match="Valid names: .*'sigmoid'"):
        losses.get("dpo2")


def test_register_refuses_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        losses.register("ipo")(lambda c, r, beta=0.1, label_smoothing=0.0: c)


@pytest.mark.parametrize(
    "name, smoothing", [("sigmoid", -0.1), ("sigmoid", 0.6), ("robust", 0.5), ("ipo", 0.1),
                        ("hinge", 0.1)]
)
def test_bad_label_smoothing_is_a_value_error(name, smoothing):
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.get(name)(CHOSEN, REJECTED, beta=0.5, label_smoothing=smoothing)


def test_only_ipo_asks_for_length_normalised_logratios():
    assert [n for n in losses.list_losses() if losses.length_normalized(n)] == ["ipo"]
    with pytest.raises(ValueError, match="Valid names"):
        losses.length_normalized("dpo2")
