"""`Projection`: a Dense with a factored LoRA update; the layer contract and plain-Dense parity."""

import json

import keras
import numpy as np
import pytest

from kzoo.layers import Projection


def test_json_round_trip_keeps_every_argument():
    layer = Projection(6, use_bias=False, lora_dropout=0.25, name="p")
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    again = keras.saving.deserialize_keras_object(config)
    assert isinstance(again, Projection)
    assert again.get_config() == layer.get_config()
    assert again.lora_dropout == 0.25 and again.units == 6 and not again.use_bias


def test_without_adapters_it_is_exactly_dense():
    x = np.random.default_rng(0).normal(size=(2, 3, 5)).astype("float32")
    ours, dense = Projection(4), keras.layers.Dense(4)
    ours.build((None, None, 5))
    dense.build((None, None, 5))
    dense.set_weights(ours.get_weights())
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(dense(x)))


def _pair(rank, activation=None, use_bias=True, alpha=None):
    """A Projection and a keras Dense with the same kernel, bias and LoRA adapters (B nonzero)."""
    rng = np.random.default_rng(rank)
    ours = Projection(4, activation=activation, use_bias=use_bias)
    dense = keras.layers.Dense(4, activation=activation, use_bias=use_bias)
    for layer in (ours, dense):
        layer.build((None, None, 5))
        layer.enable_lora(rank, lora_alpha=alpha)
    for a, b in zip(ours.weights, dense.weights, strict=True):
        value = rng.normal(size=tuple(a.shape)).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, dense


@pytest.mark.parametrize("rank, activation, use_bias, alpha",
                         [(2, None, True, None), (3, "gelu", False, 6.0), (1, "relu", True, 0.5)])
def test_factored_lora_matches_keras_dense_lora(rank, activation, use_bias, alpha):
    # Keras' Dense multiplies by kernel + (alpha / rank) A @ B; Projection computes x @ W +
    # (alpha / rank) (x @ A) @ B: the same numbers, with or without bias and activation.
    ours, dense = _pair(rank, activation, use_bias, alpha)
    x = np.random.default_rng(9).normal(size=(2, 3, 5)).astype("float32")
    want = np.asarray(dense(x))
    np.testing.assert_allclose(np.asarray(ours(x)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours(x, training=True)), want, rtol=1e-5, atol=1e-5)


def test_lora_dropout_drops_the_adapter_input_only_in_training():
    layer = Projection(5, use_bias=True, lora_dropout=0.5)
    layer.build((None, 5))
    layer.enable_lora(5, lora_alpha=5.0)  # scale alpha / rank = 1
    layer.set_lora_dropout(0.5)
    layer._kernel.assign(np.zeros((5, 5), "float32"))  # frozen part: the bias only
    layer.bias.assign(np.full((5,), 3.0, "float32"))
    layer.lora_kernel_a.assign(np.eye(5, dtype="float32"))
    layer.lora_kernel_b.assign(np.eye(5, dtype="float32"))
    x = np.random.default_rng(0).uniform(1.0, 2.0, size=(64, 5)).astype("float32")
    np.testing.assert_allclose(np.asarray(layer(x)), x + 3.0, rtol=1e-6)  # inference: no drop
    update = np.asarray(layer(x, training=True)) - 3.0
    dropped = np.isclose(update, 0.0, atol=1e-6)
    # PEFT's dropout: each input kept and scaled by 1 / (1 - rate), or zeroed.
    np.testing.assert_allclose(update[~dropped], 2.0 * x[~dropped], rtol=1e-5)
    assert 0.3 < dropped.mean() < 0.7


def test_lora_dropout_rate_zero_adds_no_state():
    layer = Projection(3)
    layer.build((None, 2))
    layer.set_lora_dropout(0.0)
    assert layer.lora_dropout == 0.0 and layer._dropout_seed is None
    layer.set_lora_dropout(0.1)
    assert layer._dropout_seed is not None


def test_int8_quantize_is_dense_int8():
    # Keras refuses to quantize Dense subclasses unless type_check is off; the quantized call
    # is Dense's own, so it matches a Dense quantized the same way.
    x = np.random.default_rng(1).normal(size=(2, 5)).astype("float32")
    ours, dense = Projection(4), keras.layers.Dense(4)
    for layer in (ours, dense):
        layer.build((None, 5))
    dense.set_weights(ours.get_weights())
    float_out = np.asarray(ours(x))
    ours.quantize("int8")
    dense.quantize("int8")
    assert ours.quantization_mode == "int8"
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(dense(x)))
    np.testing.assert_allclose(np.asarray(ours(x)), float_out, atol=0.05)


def test_quantize_passes_the_config_on():
    # Weight-only int8 (no activation quantizer) must reach Dense's quantize: the result is a
    # weight-only int8 Dense's, not the default (activations quantized too).
    import inspect

    if "config" not in inspect.signature(keras.layers.Dense.quantize).parameters:
        pytest.skip("this Keras has no quantization configs")
    x = np.random.default_rng(2).normal(size=(3, 5)).astype("float32")
    ours, dense, default = Projection(4), keras.layers.Dense(4), keras.layers.Dense(4)
    for layer in (ours, dense, default):
        layer.build((None, 5))
    dense.set_weights(ours.get_weights())
    default.set_weights(ours.get_weights())
    config = keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
    ours.quantize("int8", config=config)
    dense.quantize("int8", config=keras.quantizers.Int8QuantizationConfig(
        activation_quantizer=None))
    default.quantize("int8")
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(dense(x)))
    assert not np.array_equal(np.asarray(ours(x)), np.asarray(default(x)))


def test_lora_dropout_draws_from_the_layers_own_seed():
    # The layer's SeedGenerator (saved with it, and what a stateless JAX step threads) is
    # the one that advances, in training only.
    layer = Projection(3, lora_dropout=0.5)
    layer.build((None, 4))
    layer.enable_lora(2)
    layer.set_lora_dropout(0.5)
    state = np.asarray(layer._dropout_seed.state.value).copy()
    x = np.ones((2, 4), "float32")
    layer(x)
    np.testing.assert_array_equal(np.asarray(layer._dropout_seed.state.value), state)
    layer(x, training=True)
    advanced = not np.array_equal(np.asarray(layer._dropout_seed.state.value), state)
    # Keras' PyTorch dropout draws an unseeded SeedGenerator's masks from torch's global
    # generator instead, leaving the state as it was.
    assert advanced == (keras.backend.backend() != "torch")
