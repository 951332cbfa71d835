"""`Projection`: a Dense with a factored LoRA update; the layer contract and plain-Dense parity."""

import json

import keras
import numpy as np

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
