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


def _flat(kernel):
    # (hidden, heads, head_dim) -> (hidden, heads * head_dim)
    return kernel.reshape(kernel.shape[0], -1)


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
    w = _randomize(backbone)
    model = CausalLM.from_preset(
        "gpt_nano", vocab_size=VOCAB, num_layers=2, num_heads=4, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=SEQ,
    )
    model.token_embedding.embeddings.assign(w["token_embedding/embeddings"])
    model.position_embedding_layer.embeddings.assign(w["position_embedding/embeddings"])
    for i, block in enumerate(model.blocks):
        p = f"transformer_layer_{i}/"
        a = p + "self_attention/"
        block.attention.query_key_value.set_weights([
            np.concatenate([_flat(w[a + n + "/kernel"]) for n in ("query", "key", "value")], 1),
            np.concatenate([w[a + n + "/bias"].ravel() for n in ("query", "key", "value")]),
        ])
        block.attention.output_dense.set_weights([
            w[a + "attention_output/kernel"].reshape(-1, 32), w[a + "attention_output/bias"]
        ])
        block.attention_norm.set_weights([
            w[p + "self_attention_layer_norm/gamma"], w[p + "self_attention_layer_norm/beta"]
        ])
        block.feedforward.up.set_weights([
            w[p + "feedforward_intermediate_dense/kernel"],
            w[p + "feedforward_intermediate_dense/bias"],
        ])
        block.feedforward.down.set_weights([
            w[p + "feedforward_output_dense/kernel"], w[p + "feedforward_output_dense/bias"]
        ])
        block.feedforward_norm.set_weights([
            w[p + "feedforward_layer_norm/gamma"], w[p + "feedforward_layer_norm/beta"]
        ])
    model.final_norm.set_weights([w["layer_norm/gamma"], w["layer_norm/beta"]])
    _assert_logits_match(model, backbone, *_batch())


@pytest.mark.parametrize("num_kv_heads", [2, 4])
def test_llama_matches_keras_hub_llama(num_kv_heads):
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=4,
        num_key_value_heads=num_kv_heads, hidden_dim=32, intermediate_dim=48,
        layer_norm_epsilon=1e-6, dropout=0,
    )
    w = _randomize(backbone)
    model = CausalLM.from_preset(
        "llama_nano", vocab_size=VOCAB, num_layers=2, num_heads=4, num_kv_heads=num_kv_heads,
        hidden_dim=32, intermediate_dim=48, max_sequence_length=SEQ,
    )
    model.token_embedding.embeddings.assign(w["token_embedding/embeddings"])
    model.token_embedding.reverse_embeddings.assign(w["token_embedding/reverse_embeddings"])
    for i, block in enumerate(model.blocks):
        p = f"transformer_layer_{i}/"
        a = p + "self_attention/"
        block.attention.query_key_value.set_weights([
            np.concatenate([_flat(w[a + n + "/kernel"]) for n in ("query", "key", "value")], 1)
        ])
        block.attention.output_dense.set_weights([w[a + "attention_output/kernel"].reshape(-1, 32)])
        block.attention_norm.set_weights([w[p + "self_attention_layernorm/scale"]])
        block.feedforward.up.set_weights([np.concatenate([
            w[p + "feedforward_gate_dense/kernel"], w[p + "feedforward_intermediate_dense/kernel"]
        ], 1)])
        block.feedforward.down.set_weights([w[p + "feedforward_output_dense/kernel"]])
        block.feedforward_norm.set_weights([w[p + "feedforward_layernorm/scale"]])
    model.final_norm.set_weights([w["sequence_output_layernorm/scale"]])
    _assert_logits_match(model, backbone, *_batch())
