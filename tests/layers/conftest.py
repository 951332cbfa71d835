"""Checks every kzoo layer must pass: the Keras layer contract and trainability."""

import json

import keras
import numpy as np
import pytest


def _roundtrip(layer, *call_args, **call_kwargs):
    """Serialize to JSON and back; same class, same config, same outputs with copied weights."""
    expected = layer(*call_args, **call_kwargs)
    payload = json.dumps(keras.saving.serialize_keras_object(layer))
    clone = keras.saving.deserialize_keras_object(json.loads(payload))
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    clone(*call_args, **call_kwargs)  # build
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        np.asarray(clone(*call_args, **call_kwargs)), np.asarray(expected), atol=1e-6
    )
    return clone


def _fit_changes_all_weights(layer, inputs, make_head=None):
    """One `fit` step through the layer must move every one of its trainable weights."""
    inputs = np.asarray(inputs)
    x_in = keras.Input(shape=inputs.shape[1:], dtype=str(inputs.dtype))
    y = layer(x_in)
    y = make_head(y) if make_head else keras.layers.Dense(1)(y)
    model = keras.Model(x_in, y)
    target = np.random.default_rng(0).normal(size=(inputs.shape[0], *y.shape[1:]))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [np.array(w) for w in layer.trainable_weights]
    assert before, "layer has no trainable weights"
    model.fit(inputs, target.astype("float32"), epochs=1, batch_size=len(inputs), verbose=0)
    for w, old in zip(layer.trainable_weights, before):
        assert not np.allclose(np.array(w), old), f"weight {w.path} did not change"


@pytest.fixture
def check_roundtrip():
    return _roundtrip


@pytest.fixture
def check_fit_changes_all_weights():
    return _fit_changes_all_weights


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
