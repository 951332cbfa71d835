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


def test_defaults_are_gpt2s_mlp():
    ffn = FeedForward(8, 32)
    config = ffn.get_config()
    assert (config["activation"], config["use_bias"]) == ("gelu", True)
    assert config["kernel_initializer"]["class_name"] == "GlorotUniform"
    assert config["output_initializer"] is None
    ffn.build((None, None, 8))
    assert tuple(ffn.up.kernel.shape) == (8, 32) and tuple(ffn.down.kernel.shape) == (32, 8)
    assert ffn.up.bias is not None and ffn.down.bias is not None


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_dense_argument_replaces_both_projections(rng, activation):
    # A decoder's prepared weights come in through `dense(x, name)`: "up" then "down".
    ffn = FeedForward(4, 6, activation=activation)
    x = rng.normal(size=(2, 3, 4)).astype("float32")
    want = np.asarray(ffn(x))
    seen = []

    def dense(h, name):
        seen.append(name)
        return getattr(ffn, name)(h)

    np.testing.assert_allclose(np.asarray(ffn(x, dense=dense)), want, rtol=1e-6)
    assert seen == ["up", "down"]


@pytest.mark.parametrize("activation", ["swiglu", "geglu", "reglu"])
def test_gated_activation_keeps_the_input_dtype(activation):
    # The gate is computed in float32 (SiLU's small negative tail) and cast back to up's dtype.
    import keras

    gate = np.linspace(-6, 6, 12).astype("float32")
    up = np.linspace(0.5, 2.0, 12).astype("float32")
    out = get_activation(activation)(keras.ops.cast(gate, "bfloat16"),
                                     keras.ops.cast(up, "bfloat16"))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    fn = {"swiglu": lambda g: g / (1 + np.exp(-g)), "reglu": lambda g: np.maximum(g, 0),
          "geglu": lambda g: 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))}
    g16 = np.asarray(keras.ops.cast(keras.ops.cast(gate, "bfloat16"), "float32"))
    u16 = np.asarray(keras.ops.cast(keras.ops.cast(up, "bfloat16"), "float32"))
    np.testing.assert_allclose(np.asarray(keras.ops.cast(out, "float32")),
                               fn[activation](g16) * u16, rtol=2e-2, atol=1e-3)


def test_initializers_names_and_policy_reach_both_projections():
    import keras

    ffn = FeedForward(4, 6, kernel_initializer="zeros", output_initializer="ones",
                      dtype="mixed_bfloat16")
    ffn.build((None, None, 4))
    assert (ffn.up.name, ffn.down.name) == ("up", "down")  # what `dense(x, name)` receives
    assert not ffn.up.kernel.numpy().any() and np.all(ffn.down.kernel.numpy() == 1.0)
    assert ffn.up.dtype_policy.name == ffn.down.dtype_policy.name == "mixed_bfloat16"
    out = ffn(np.ones((1, 2, 4), "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert ffn.get_config()["output_initializer"]["class_name"] == "Ones"
    same = FeedForward(4, 6, kernel_initializer="ones")  # no output_initializer: the kernel's
    same.build((None, None, 4))
    assert np.all(same.down.kernel.numpy() == 1.0) and np.all(same.up.kernel.numpy() == 1.0)


@pytest.mark.parametrize("args, message", [
    ((0, 4), "`hidden_dim` must be a positive integer. Received: hidden_dim=0"),
    ((4, -1), "`intermediate_dim` must be a positive integer. Received: intermediate_dim=-1"),
])
def test_bad_sizes_name_the_argument(args, message):
    with pytest.raises(ValueError) as info:
        FeedForward(*args)
    assert str(info.value) == message
