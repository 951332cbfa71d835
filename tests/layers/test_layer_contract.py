"""Every layer kzoo registers passes `tests.harness.run_layer_test`: the Keras layer contract, a
`.keras` round trip, a fit step that moves every weight, and causality and padding masks for the
sequence layers. The examples come from one table; a registered layer missing from it fails, so
registering a layer is what gets it tested.
"""

import inspect

import keras
import numpy as np
import pytest

import kzoo.layers
from kzoo.layers import (
    CausalSelfAttention,
    FeedForward,
    PositionEmbedding,
    RMSNorm,
    TokenEmbedding,
    TransformerBlock,
)
from kzoo.layers.projection import Projection
from tests.harness import run_layer_test

RNG = np.random.default_rng(7)
HIDDEN = RNG.normal(size=(2, 6, 16)).astype("float32")  # (batch, seq, hidden)
IDS = RNG.integers(0, 11, size=(2, 6)).astype("int32")
POSITIONS = np.array([[0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7]], "int32")


# name -> (make the layer, inputs, a sequence layer?). Several rows per class cover its options.
EXAMPLES = {
    "TokenEmbedding": (lambda: TokenEmbedding(11, 16), IDS, False),
    "PositionEmbedding": (lambda: PositionEmbedding(8, 16), POSITIONS, False),
    "RMSNorm": (lambda: RMSNorm(), HIDDEN, False),
    "RMSNorm/offset": (lambda: RMSNorm(scale_offset=1.0), HIDDEN, False),
    "Projection": (lambda: Projection(12), HIDDEN, False),
    "FeedForward/gelu": (lambda: FeedForward(16, 32), HIDDEN, False),
    "FeedForward/swiglu": (lambda: FeedForward(16, 32, activation="swiglu"), HIDDEN, False),
    "CausalSelfAttention/gpt": (lambda: CausalSelfAttention(16, 4), HIDDEN, True),
    "CausalSelfAttention/gqa-rope": (
        lambda: CausalSelfAttention(16, 4, num_kv_heads=2, use_rope=True, use_bias=False,
                                    head_dim=8), HIDDEN, True),
    "CausalSelfAttention/qk-norm-window": (
        lambda: CausalSelfAttention(16, 4, num_kv_heads=2, use_rope=True, use_bias=False,
                                    qk_norm=True, sliding_window=3, attention_scale=0.3),
        HIDDEN, True),
    "TransformerBlock/gpt": (lambda: TransformerBlock(16, 4, 32), HIDDEN, True),
    "TransformerBlock/llama": (
        lambda: TransformerBlock(16, 4, 32, num_kv_heads=2, activation="swiglu", norm="rmsnorm",
                                 use_bias=False, use_rope=True), HIDDEN, True),
    "TransformerBlock/gemma3-like": (
        lambda: TransformerBlock(16, 4, 32, num_kv_heads=2, activation="geglu", norm="rmsnorm",
                                 use_bias=False, use_rope=True, qk_norm=True, post_norms=True,
                                 norm_scale_offset=1.0, sliding_window=3), HIDDEN, True),
}


def _registered_layers():
    """Every `keras.layers.Layer` subclass that `kzoo.layers` exports (all register as kzoo>)."""
    return {name for name, obj in vars(kzoo.layers).items()
            if inspect.isclass(obj) and issubclass(obj, keras.layers.Layer)} | {"Projection"}


def test_every_registered_layer_has_an_example():
    covered = {key.split("/")[0] for key in EXAMPLES}
    missing = _registered_layers() - covered
    assert not missing, f"add an example for {sorted(missing)} to EXAMPLES"
    for name in covered:
        cls = {**vars(kzoo.layers), "Projection": Projection}[name]
        assert keras.saving.get_registered_name(cls) == f"kzoo>{name}"


@pytest.mark.parametrize("key", EXAMPLES)
def test_layer_contract(key, tmp_path):
    make, inputs, sequence = EXAMPLES[key]
    run_layer_test(make(), inputs, tmp_path, sequence=sequence)
