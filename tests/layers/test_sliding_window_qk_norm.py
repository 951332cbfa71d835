"""The Qwen3 / Gemma 3 options in the layers: q/k norms, (1 + w) RMSNorm, post norms, the
attention scale and sliding-window attention (training masks on both attention paths, the
KV-cached decoders, padding), each kept in get_config; old configs load unchanged.
Parity with transformers is in tests/models/test_qwen3_gemma3_parity.py."""

import keras
import numpy as np
import pytest

from kzoo.layers import CausalSelfAttention, RMSNorm, TransformerBlock
from kzoo.models import CausalLM
from tests.harness import run_layer_test

GEMMA_LIKE = dict(
    vocab_size=64, num_layers=3, num_heads=4, num_kv_heads=2, hidden_dim=32, head_dim=12,
    intermediate_dim=48, max_sequence_length=64, position_embedding="rope", norm="rmsnorm",
    activation="geglu", use_bias=False, qk_norm=True, norm_scale_offset=1.0,
    embedding_scale=32**0.5, post_norms=True, sliding_window=3,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    local_rope_max_wavelength=100.0, rope_scaling_factor=2.0, attention_scale=0.2,
)


def gemma_like(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    model = CausalLM(**{**GEMMA_LIKE, **overrides})
    # Norm scales start at zero with the offset: give them values so they matter.
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.path.endswith("scale"):
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    return model


def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- layers
def test_rms_norm_scale_offset_multiplies_by_offset_plus_scale(check_roundtrip):
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32")
    norm = RMSNorm(1e-6, scale_offset=1.0)
    y = np.asarray(norm(x))
    assert np.allclose(np.asarray(norm.scale), 0.0)  # Gemma's w starts at zero: identity scale
    np.testing.assert_allclose(y, np.asarray(RMSNorm(1e-6)(x)), atol=1e-6)
    w = np.linspace(-0.5, 0.5, 8).astype("float32")
    norm.scale.assign(w)
    unit = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(norm(x)), unit * (1.0 + w), atol=1e-5)
    check_roundtrip(norm, x)
    assert RMSNorm.from_config({"epsilon": 1e-5}).scale_offset == 0.0  # an old config


def test_attention_options_round_trip_and_apply(check_roundtrip):
    x = np.random.default_rng(1).normal(size=(2, 7, 16)).astype("float32")
    attn = CausalSelfAttention(16, 4, 2, head_dim=6, use_rope=True, qk_norm=True,
                               norm_scale_offset=1.0, sliding_window=3, attention_scale=0.3)
    check_roundtrip(attn, x)
    config = attn.get_config()
    assert (config["qk_norm"], config["sliding_window"], config["attention_scale"],
            config["norm_scale_offset"]) == (True, 3, 0.3, 1.0)
    names = sorted(w.path.split("/", 1)[-1] for w in attn.weights)
    assert "key_norm/scale" in names and "query_norm/scale" in names
    # q/k norms act per head, before RoPE: split_heads' queries have unit RMS per head when
    # RoPE (a rotation, norm-preserving) follows a scale of ones (offset 1 + w = 0 + 1).
    q, k, _ = attn.split_heads(attn.query_key_value(x))
    rms = np.sqrt(np.mean(np.asarray(q) ** 2, axis=-1))
    np.testing.assert_allclose(rms, 1.0, atol=1e-3)


def test_old_attention_and_block_configs_load_without_the_new_options():
    attn = CausalSelfAttention(16, 4)
    config = attn.get_config()
    for key in ("qk_norm", "qk_norm_epsilon", "norm_scale_offset", "sliding_window",
                "attention_scale"):
        config.pop(key)
    again = CausalSelfAttention.from_config(config)
    assert not again.qk_norm and again.sliding_window is None and again.scale == 0.5  # 4 ** -0.5
    block = TransformerBlock(16, 4, 32).get_config()
    for key in ("qk_norm", "norm_scale_offset", "post_norms", "sliding_window",
                "attention_scale"):
        block.pop(key)
    assert TransformerBlock.from_config(block).post_attention_norm is None


def test_block_post_norms_round_trip_and_change_the_output(check_roundtrip):
    x = np.random.default_rng(2).normal(size=(2, 5, 16)).astype("float32")
    keras.utils.set_random_seed(0)
    block = TransformerBlock(16, 4, 24, norm="rmsnorm", activation="geglu", use_rope=True,
                             qk_norm=True, norm_scale_offset=1.0, post_norms=True,
                             sliding_window=2, attention_scale=0.5)
    check_roundtrip(block, x)
    plain = TransformerBlock.from_config({**block.get_config(), "post_norms": False})
    plain.build(x.shape)
    values = {w.path.split("/", 1)[-1]: w for w in block.weights}
    for w in plain.weights:
        w.assign(values.pop(w.path.split("/", 1)[-1]))
    assert sorted(values) == ["post_attention_norm/scale", "post_feedforward_norm/scale"]
    # Gemma's (1 + w) with w = 0 is the identity scale, yet the norm itself still rescales.
    assert np.abs(np.asarray(block(x)) - np.asarray(plain(x))).max() > 1e-3


def test_sliding_mask_follows_transformers_convention():
    masking_utils = pytest.importorskip("transformers.masking_utils")
    window, seq = 3, 7
    mask = np.asarray(CausalSelfAttention(8, 2, sliding_window=window).attention_mask(seq, seq))
    overlay = masking_utils.sliding_window_overlay(window)
    expected = [[q >= k and bool(overlay(0, 0, q, k)) for k in range(seq)] for q in range(seq)]
    np.testing.assert_array_equal(mask[0], np.array(expected))
    assert mask[0].sum(axis=1).max() == window  # t sees t - window + 1 .. t


@pytest.mark.parametrize("padded", [False, True])
def test_fused_and_einsum_paths_agree_with_a_window(padded):
    x = np.random.default_rng(3).normal(size=(2, 9, 16)).astype("float32")
    attn = CausalSelfAttention(16, 4, 2, use_rope=True, sliding_window=3, qk_norm=True)
    mask = np.ones((2, 9), "int32")
    if padded:
        mask[1, :4] = 0  # left padding
    einsum = np.asarray(attn(x, padding_mask=mask, attention_impl="einsum"))
    fused = np.asarray(attn(x, padding_mask=mask, attention_impl="fused"))
    np.testing.assert_allclose(fused[mask == 1], einsum[mask == 1], atol=1e-5)
    # Not vacuous: without the window the late positions differ.
    full = CausalSelfAttention.from_config({**attn.get_config(), "sliding_window": None})
    full.build(x.shape)
    full.set_weights(attn.get_weights())
    late = np.asarray(full(x, padding_mask=mask, attention_impl="fused"))[:, 6:]
    assert np.abs(late - fused[:, 6:]).max() > 1e-3


def test_window_larger_than_the_context_is_global():
    model = gemma_like(sliding_window=64)
    full = CausalLM.from_config({**model.get_config(), "sliding_window": None})
    full.set_weights(model.get_weights())
    ids = np.arange(1, 21)[None] % 64
    np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(full(ids)), atol=1e-5)


# ----------------------------------------------------------------------------- the model
def test_causal_lm_options_round_trip_through_a_keras_file(tmp_path):
    model = gemma_like()
    ids = np.random.default_rng(4).integers(0, 64, size=(2, 12))
    config = model.get_config()
    assert config["layer_types"] == GEMMA_LIKE["layer_types"]
    assert config["embedding_scale"] == pytest.approx(32**0.5)
    path = tmp_path / "gemma_like.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    assert again.get_config() == config
    np.testing.assert_allclose(np.asarray(again(ids)), np.asarray(model(ids)), atol=1e-5)
    # The per-layer settings: sliding layers get the window and the local RoPE without scaling.
    local, glob = again.blocks[0].attention, again.blocks[1].attention
    assert (local.sliding_window, local.rope_max_wavelength, local.rope_scaling_factor) == (
        3, 100.0, 1.0)
    assert (glob.sliding_window, glob.rope_max_wavelength, glob.rope_scaling_factor) == (
        None, 10000.0, 2.0)


def test_old_model_config_loads_unchanged():
    model = CausalLM.from_preset("llama_nano", vocab_size=50)
    config = model.get_config()
    for key in ("qk_norm", "norm_scale_offset", "embedding_scale", "post_norms",
                "sliding_window", "layer_types", "local_rope_max_wavelength", "attention_scale"):
        config.pop(key)
    again = CausalLM.from_config(config)
    again.set_weights(model.get_weights())
    ids = np.array([[1, 2, 3, 4]])
    np.testing.assert_allclose(np.asarray(again(ids)), np.asarray(model(ids)), atol=1e-6)


def test_embedding_scale_scales_tokens_not_the_tied_head():
    model = gemma_like()
    ids = np.array([[3, 4]])
    scaled = np.asarray(model.embed(ids))
    np.testing.assert_allclose(scaled, np.asarray(model.token_embedding(ids)) * 32**0.5,
                               rtol=1e-6)
    hidden = np.ones((1, 1, 32), "float32")
    np.testing.assert_allclose(np.asarray(model.logits(hidden))[0, 0],
                               np.asarray(model.token_embedding.embeddings).sum(1), atol=1e-6)


def test_cached_decoding_equals_the_uncached_pass_past_the_window():
    from kzoo.generation.decoders import prepared_logits

    model = gemma_like()
    ids = np.random.default_rng(5).integers(0, 64, size=(2, 14))
    full = np.asarray(model(ids))
    cache = model.init_cache(2, 14)
    logits, cache = model.call_with_cache(ids[:, :5], cache, 0)  # prefill longer than window
    steps = [np.asarray(logits)]
    for t in range(5, 14):
        logits, cache = model.call_with_cache(ids[:, t:t + 1], cache, t)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4)
    np.testing.assert_allclose(np.asarray(prepared_logits(model, ids)), full, atol=1e-4)


def test_ragged_batch_generation_equals_each_prompt_alone():
    """Left padding with windows: the window counts the row's own tokens, not the pads."""
    model = gemma_like()
    prompts = [[5, 9, 2, 7, 1, 3, 8, 4], [6, 2]]
    together = model.generate(prompts, max_new_tokens=12).token_ids
    alone = [model.generate([p], max_new_tokens=12).token_ids[0] for p in prompts]
    assert together == alone


def test_attention_pictures_follow_the_window_and_the_model():
    from kzoo.viz import model_attention

    model = gemma_like()
    ids = np.random.default_rng(6).integers(0, 64, size=(1, 8))
    patterns, hidden = model_attention(model, ids, return_hidden_states=True)
    np.testing.assert_allclose(hidden, np.asarray(model.hidden_states(ids)), atol=1e-5)
    local, glob = patterns[0][0, 0], patterns[1][0, 0]  # (queries, keys) of head 0
    assert np.all(local[np.tril_indices(8, -3)] == 0) and np.all(glob[np.tril_indices(8)] > 0)


def test_lora_and_int8_generation_run_with_the_options():
    model = gemma_like()
    prompts = [[5, 9, 2, 7, 1, 3, 8, 4]]
    base = model.generate(prompts, max_new_tokens=8).token_ids
    assert model.generate(prompts, max_new_tokens=8, weights="float32").token_ids == base
    int8 = model.generate(prompts, max_new_tokens=8, weights="int8").token_ids
    assert len(int8[0]) == 8
    # The int8 decoder runs the same blocks (q/k norms, post norms, windows): its logits stay
    # near the float ones, far nearer than the logits' own spread.
    from kzoo.generation import quantize_for_generation
    from kzoo.generation.decoders import prepared_logits

    ids = np.array([prompts[0] * 2])
    ref = np.asarray(model(ids))
    q8 = np.asarray(prepared_logits(model, ids, quantize_for_generation(model, "int8")))
    assert np.abs(q8 - ref).max() < 0.1 * ref.std()
    model.enable_lora(rank=2, targets="all")  # B starts at zero: the same model
    assert model.generate(prompts, max_new_tokens=8).token_ids == base


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides, match", [
    (dict(layer_types=["sliding_attention", "global", "full_attention"]),
     r"Unknown `layer_types` entries: \['global'\]. Valid values: \['full_attention', "
     r"'sliding_attention'\]"),
    (dict(layer_types=["full_attention"] * 2), "has 2 entries; it needs one per layer"),
    (dict(sliding_window=0), "`sliding_window` must be a positive integer"),
    (dict(norm="layernorm", qk_norm=False, use_bias=True),
     "`norm_scale_offset` applies to RMSNorm only"),
    (dict(norm="layernorm", norm_scale_offset=0.0), "`qk_norm=True` needs norm='rmsnorm'"),
    (dict(attention_scale=-1.0), "`attention_scale` must be a positive number"),
])
def test_bad_options_get_one_line(overrides, match):
    with pytest.raises(ValueError, match=match) as excinfo:
        CausalLM(**{**GEMMA_LIKE, **overrides})
    one_line(excinfo)


@pytest.mark.parametrize("make", [
    lambda: CausalSelfAttention(16, 4, 2, use_rope=True, qk_norm=True, norm_scale_offset=1.0,
                                sliding_window=3, attention_scale=0.3),
    lambda: TransformerBlock(16, 4, 24, norm="rmsnorm", activation="geglu", use_rope=True,
                             qk_norm=True, norm_scale_offset=1.0, post_norms=True,
                             sliding_window=3),
], ids=["attention", "block"])
def test_layer_contract_with_the_options(make, tmp_path):
    """Config and .keras round trips, causality and padding, and one fit step moving every
    weight (the q/k and post norm scales included)."""
    x = np.random.default_rng(7).normal(size=(2, 8, 16)).astype("float32")
    run_layer_test(make(), x, tmp_path, sequence=True)
