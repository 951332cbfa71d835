"""A model built with `dropout > 0` is deterministic at inference and drops units in training,
the embedding dropout included (a planted bug that left it on at inference went unnoticed)."""

import keras
import numpy as np
import pytest

from kzoo.generation import generate
from kzoo.models import CausalLM

TINY = dict(vocab_size=32, num_layers=2, num_heads=2, hidden_dim=16, max_sequence_length=16,
            dropout=0.5)


def tiny(position_embedding):
    keras.utils.set_random_seed(0)
    extra = dict(norm="rmsnorm", activation="swiglu", num_kv_heads=1) \
        if position_embedding == "rope" else {}
    return CausalLM(**TINY, position_embedding=position_embedding, **extra)


IDS = np.array([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]], "int32")


def full_forward_greedy(model, prompt, steps):
    """Greedy decoding without a cache, the sequence right-padded to one width (causal: the
    padding cannot change the last real position): eager JAX compiles each op per new shape."""
    seq = list(prompt)
    for _ in range(steps):
        ids = np.zeros((1, model.max_sequence_length), "int32")  # (1, width), right-padded
        ids[0, :len(seq)] = seq
        seq.append(int(np.asarray(model(ids))[0, len(seq) - 1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("position_embedding", ["learned", "rope"])
def test_inference_is_deterministic_with_dropout(position_embedding):
    model = tiny(position_embedding)
    first = np.asarray(model(IDS))
    np.testing.assert_array_equal(np.asarray(model(IDS)), first)
    np.testing.assert_array_equal(np.asarray(model(IDS, training=False)), first)
    np.testing.assert_array_equal(np.asarray(model.hidden_states(IDS)),
                                  np.asarray(model.hidden_states(IDS)))
    # The cached path, and so generation, runs in inference mode too.
    cache = model.init_cache(2, 16)
    cached, _ = model.call_with_cache(IDS, cache, 0)
    np.testing.assert_allclose(np.asarray(cached), first, atol=1e-5)
    tokens = generate(model, IDS[:1].tolist(), 6, jit_compile=False).token_ids[0]
    assert tokens == full_forward_greedy(model, IDS[0].tolist(), 6)


@pytest.mark.parametrize("position_embedding", ["learned", "rope"])
def test_embedding_dropout_is_active_in_training(position_embedding):
    """With every block's dropout switched off, training mode still changes the outputs: the
    embedding dropout; switching that off too makes training mode deterministic."""
    model = tiny(position_embedding)
    for block in model.blocks:
        block.residual_dropout.rate = 0.0
        block.attention.dropout_layer.rate = 0.0
    inference = np.asarray(model(IDS))
    training = np.asarray(model(IDS, training=True))
    assert not np.allclose(training, inference, atol=1e-4)
    assert not np.allclose(np.asarray(model(IDS, training=True)), training, atol=1e-4)
    cache = model.init_cache(2, 16)
    cached, _ = model.call_with_cache(IDS, cache, 0, training=True)
    assert not np.allclose(np.asarray(cached), inference, atol=1e-4)
    model.embedding_dropout.rate = 0.0
    np.testing.assert_allclose(np.asarray(model(IDS, training=True)), inference, atol=1e-5)


def test_block_dropout_is_active_in_training():
    """With the embedding dropout off, training mode still drops units: the blocks' dropout,
    in the plain call and in the cached one."""
    model = tiny("learned")
    model.embedding_dropout.rate = 0.0
    inference = np.asarray(model(IDS))
    assert not np.allclose(np.asarray(model(IDS, training=True)), inference, atol=1e-4)
    cached, _ = model.call_with_cache(IDS, model.init_cache(2, 16), 0, training=True)
    assert not np.allclose(np.asarray(cached), inference, atol=1e-4)
