"""The options real checkpoints need, each separate and off by default: biases per projection
(Qwen2 biases q/k/v only), a head size apart from the width, and Llama 3.1's RoPE frequency
scaling. Configs saved before these options existed load unchanged."""

import numpy as np
import pytest

from kzoo.layers import CausalSelfAttention, TransformerBlock, rotary_cos_sin
from kzoo.layers.rotary import check_rope_scaling
from kzoo.models import CausalLM

LLAMA3 = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def _weights(layer):
    return {w.path.split("/", 1)[-1]: tuple(w.shape) for w in layer.weights}


def test_qkv_and_output_biases_are_separate_options():
    attn = CausalSelfAttention(16, 4, 2, use_bias=False, qkv_bias=True)
    attn.build((None, None, 16))
    assert attn.query_key_value.use_bias and not attn.output_dense.use_bias
    block = TransformerBlock(16, 4, 32, use_bias=True, attention_output_bias=False,
                             feedforward_bias=False)
    block.build((None, None, 16))
    assert block.attention.qkv_bias and not block.attention.output_bias
    assert not block.feedforward.up.use_bias and block.attention_norm.center  # LN keeps its bias


def test_use_bias_alone_behaves_as_before():
    for use_bias in (True, False):
        block = TransformerBlock(16, 4, 32, use_bias=use_bias)
        block.build((None, None, 16))
        dense = (block.attention.query_key_value, block.attention.output_dense,
                 block.feedforward.up, block.feedforward.down)
        assert all(d.use_bias == use_bias for d in dense)


def test_head_dim_apart_from_the_width_and_its_cache():
    model = CausalLM.from_preset("llama_nano", vocab_size=50, hidden_dim=40, num_heads=4,
                                 num_kv_heads=2, head_dim=6)
    qkv = model.blocks[0].attention.query_key_value.kernel
    assert tuple(qkv.shape) == (40, (4 + 2 * 2) * 6)
    cache = model.init_cache(1, 8)
    assert tuple(cache[0][0].shape) == (1, 2, 8, 6)
    ids = np.array([[1, 2, 3, 4]])
    full = np.asarray(model(ids))
    step, cache = model.call_with_cache(ids, cache, 0)
    np.testing.assert_allclose(np.asarray(step), full, atol=1e-5)
    with pytest.raises(ValueError, match="`hidden_dim` \\(40\\) must be divisible by"):
        CausalSelfAttention(40, 6)  # without head_dim the width must divide


def test_llama3_frequencies_match_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=2, max_position_embeddings=512,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, **{
            k: v for k, v in LLAMA3.items() if k != "type"}})
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    cos, sin = rotary_cos_sin(np.ones((1, 1)), 32, 10000.0, rope_scaling=LLAMA3)
    angles = np.arctan2(np.asarray(sin), np.asarray(cos))[0, 0, 0, :16]  # position 1
    np.testing.assert_allclose(angles, expected.numpy(), rtol=1e-6)
    plain = np.arctan2(*map(np.asarray, rotary_cos_sin(np.ones((1, 1)), 32)[::-1]))
    assert not np.allclose(angles, plain[0, 0, 0, :16])  # the scaling did something


@pytest.mark.parametrize("bad, match", [
    ({"type": "yarn", "factor": 2.0}, r"'type' is one of \['llama3'\]"),
    ({"type": "llama3", "factor": 2.0}, r"needs exactly the keys"),
    ({**LLAMA3, "high_freq_factor": 0.5}, r"high_freq_factor > low_freq_factor"),
])
def test_bad_rope_scaling_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        check_rope_scaling(bad)


def test_configs_saved_before_these_options_load_unchanged():
    model = CausalLM.from_preset("gpt_nano", vocab_size=50)
    config = model.get_config()
    for key in ("qkv_bias", "attention_output_bias", "feedforward_bias", "head_dim",
                "rope_scaling"):
        config.pop(key)
    old = CausalLM.from_config(config)
    assert _weights(old) == _weights(model)
    assert old.get_config() == model.get_config()
