"""Parity with code nobody here wrote: keras_hub's GPT-2 and Llama backbones.

Random weights (biases and norm scales included, so no parameter can hide at its default) are
copied into the matching kzoo model; the logits must agree on a right-padded batch.
"""

import keras_hub
import numpy as np
import pytest

from kzoo.models import CausalLM

VOCAB, SEQ = 97, 12


def _randomize(backbone, seed=0):
    rng = np.random.default_rng(seed)
    for w in backbone.weights:
        w.assign(rng.normal(scale=0.2, size=w.shape).astype("float32"))
    return {w.path: w.numpy() for w in backbone.weights}


def _batch():
    rng = np.random.default_rng(1)
    ids = rng.integers(1, VOCAB, size=(3, SEQ))
    mask = np.ones_like(ids)
    mask[0, 8:] = 0
    mask[1, 5:] = 0
    ids = ids * mask
    return ids, mask


def _assert_logits_match(kzoo_model, backbone, ids, mask):
    hidden = backbone({"token_ids": ids, "padding_mask": mask})
    expected = np.asarray(backbone.token_embedding(hidden, reverse=True))
    actual = np.asarray(kzoo_model({"token_ids": ids, "padding_mask": mask}))
    real = mask.astype(bool)
    diff = np.abs(actual[real] - expected[real]).max()
    assert diff < 1e-4, f"max abs logit difference {diff}"
    # Guard against a vacuous pass: the logits vary across tokens and positions.
    assert expected[real].std() > 0.05


def test_gpt_matches_keras_hub_gpt2():
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=64,
        dropout=0.0, max_sequence_length=SEQ,
    )
    _randomize(backbone)
    # The weight mapping is library code (`kzoo.interop.keras_hub`), used both ways.
    model = CausalLM.from_keras_hub(backbone)
    assert model.get_config()["activation"] == "gelu" and model.position_embedding == "learned"
    _assert_logits_match(model, backbone, *_batch())
    _assert_logits_match(model, model.to_keras_hub(), *_batch())


@pytest.mark.parametrize("num_kv_heads", [2, 4])
def test_llama_matches_keras_hub_llama(num_kv_heads):
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=4,
        num_key_value_heads=num_kv_heads, hidden_dim=32, intermediate_dim=48,
        layer_norm_epsilon=1e-6, dropout=0,
    )
    _randomize(backbone)
    model = CausalLM.from_keras_hub(backbone, max_sequence_length=SEQ)
    assert model.num_kv_heads == num_kv_heads and not model.tie_embeddings
    _assert_logits_match(model, backbone, *_batch())
    _assert_logits_match(model, model.to_keras_hub(), *_batch())
