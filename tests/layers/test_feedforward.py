import numpy as np
import pytest

from kzoo.layers import FeedForward, get_activation, list_activations


@pytest.mark.parametrize("activation", ["gelu", "swiglu", "relu", "geglu"])
def test_shapes_and_roundtrip(rng, check_roundtrip, activation):
    ffn = FeedForward(8, 32, activation=activation, use_bias=activation == "gelu")
    x = rng.normal(size=(2, 3, 8)).astype("float32")
    assert tuple(ffn(x).shape) == (2, 3, 8)
    check_roundtrip(ffn, x)


def test_swiglu_formula(rng):
    ffn = FeedForward(4, 6, activation="swiglu", use_bias=False)
    x = rng.normal(size=(1, 2, 4)).astype("float32")
    ffn(x)
    up, down = ffn.up.kernel.numpy(), ffn.down.kernel.numpy()
    gate, lin = x @ up[:, :6], x @ up[:, 6:]
    silu = gate / (1 + np.exp(-gate))
    np.testing.assert_allclose(ffn(x), (silu * lin) @ down, atol=1e-5)


def test_gelu_is_gpt2_tanh_approximation():
    x = np.linspace(-4, 4, 9).astype("float32")
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(get_activation("gelu")(x), expected, atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_fit_changes_all_weights(rng, check_fit_changes_all_weights, activation):
    check_fit_changes_all_weights(
        FeedForward(8, 16, activation=activation), rng.normal(size=(4, 3, 8)).astype("float32")
    )


def test_unknown_activation_lists_valid():
    with pytest.raises(ValueError, match="swiglu"):
        FeedForward(8, 16, activation="swish-ish")
    assert {"gelu", "swiglu"} <= set(list_activations())
