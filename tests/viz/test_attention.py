"""The recomputed attention pattern must reproduce what the layers and the model compute."""

import numpy as np
import pytest

from kzoo.layers import CausalSelfAttention
from kzoo.models import CausalLM
from kzoo.viz import attention_output, attention_weights, model_attention, plot_attention

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "num_heads, num_kv_heads, use_rope",
    [(4, 4, False), (4, 2, True), (4, 1, True), (2, 2, True)],
)
def test_weights_reproduce_layer_output(num_heads, num_kv_heads, use_rope):
    layer = CausalSelfAttention(hidden_dim=16, num_heads=num_heads, num_kv_heads=num_kv_heads,
                                use_rope=use_rope)
    x = RNG.normal(size=(2, 7, 16)).astype("float32")
    expected = np.asarray(layer(x))
    probs = attention_weights(layer, x)
    assert probs.shape == (2, num_heads, 7, 7)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(probs[..., np.triu_indices(7, k=1)[0], np.triu_indices(7, k=1)[1]] < 1e-6)
    np.testing.assert_allclose(attention_output(layer, x, probs), expected, atol=1e-5)


def test_weights_follow_the_layers_rope_scaling():
    """The pattern comes from the layer's own `split_heads`, so Llama 3.1's RoPE scaling is in
    it (a copy of the head split once left the scaling out)."""
    scaling = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8}
    layer = CausalSelfAttention(hidden_dim=16, num_heads=4, num_kv_heads=2, use_rope=True,
                                rope_scaling=scaling)
    x = RNG.normal(size=(1, 9, 16)).astype("float32")
    expected = np.asarray(layer(x))
    np.testing.assert_allclose(attention_output(layer, x, attention_weights(layer, x)),
                               expected, atol=1e-5)


def test_wrong_pattern_does_not_reproduce_output():
    """Guards the check above: a pattern with heads swapped gives a different output."""
    layer = CausalSelfAttention(hidden_dim=16, num_heads=4, num_kv_heads=2, use_rope=True)
    x = RNG.normal(size=(1, 6, 16)).astype("float32")
    expected = np.asarray(layer(x))
    probs = attention_weights(layer, x)[:, ::-1]
    assert np.abs(attention_output(layer, x, probs) - expected).max() > 1e-3


def test_padding_mask_zeroes_padded_keys():
    layer = CausalSelfAttention(hidden_dim=8, num_heads=2)
    x = RNG.normal(size=(1, 5, 8)).astype("float32")
    mask = np.array([[0, 0, 1, 1, 1]])
    expected = np.asarray(layer(x, padding_mask=mask))
    probs = attention_weights(layer, x, padding_mask=mask)
    assert np.all(probs[0, :, 2:, :2] < 1e-6)
    np.testing.assert_allclose(attention_output(layer, x, probs), expected, atol=1e-5)


@pytest.mark.parametrize("preset", ["gpt_nano", "llama_nano"])
def test_model_attention_matches_model_hidden_states(preset):
    model = CausalLM.from_preset(preset, vocab_size=40, max_sequence_length=16)
    ids = RNG.integers(0, 40, size=(2, 9))
    patterns, hidden = model_attention(model, ids, return_hidden_states=True)
    assert len(patterns) == model.num_layers
    assert patterns[0].shape == (2, model.num_heads, 9, 9)
    np.testing.assert_allclose(hidden, np.asarray(model.hidden_states(ids)), atol=1e-5)
    # And each block's pattern reproduces that block's attention output on its real input.
    block = model.blocks[1]
    x = np.asarray(model.blocks[0](model.embed(ids)))
    normed = block.attention_norm(x)
    np.testing.assert_allclose(attention_output(block.attention, normed, patterns[1]),
                               np.asarray(block.attention(normed)), atol=1e-5)


def test_bad_inputs_raise_value_errors(tmp_path):
    model = CausalLM.from_preset("gpt_nano", vocab_size=10, max_sequence_length=4)
    with pytest.raises(ValueError, match="max_sequence_length=4"):
        model_attention(model, np.zeros((1, 5), "int32"))
    with pytest.raises(ValueError, match="int array"):
        model_attention(model, np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match=r"\(batch, seq, 64\)"):
        attention_weights(model.blocks[0].attention, np.zeros((1, 3, 8), "float32"))
    with pytest.raises(ValueError, match="not built"):
        attention_weights(CausalSelfAttention(8, 2), np.zeros((1, 3, 8), "float32"))
    with pytest.raises(ValueError, match="2 token labels"):
        plot_attention(np.eye(3), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match=".png"):
        plot_attention(np.eye(2), ["a", "b"], tmp_path / "x.jpg")


def test_plot_attention_writes_png(tmp_path):
    probs = np.tril(np.ones((2, 4, 4))) / np.arange(1, 5)[:, None]
    path = plot_attention(probs, list("abcd"), tmp_path / "sub" / "att.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000
