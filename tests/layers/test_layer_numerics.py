"""Every kzoo layer against an outside reference: plain NumPy formulas written from the papers
(attention, RMSNorm, LayerNorm, GELU, SwiGLU) and keras-hub's `RotaryEmbedding`.

Each layer is checked on its own, with weights drawn at random (not the initial ones, so biases,
scales and untied matrices all matter), so that a bug in a layer fails that layer's test and not
only the model-level parity tests.
"""

import math

import keras
import keras_hub
import numpy as np
import pytest

from kzoo.layers import (
    CausalSelfAttention,
    FeedForward,
    PositionEmbedding,
    RMSNorm,
    TokenEmbedding,
    TransformerBlock,
    apply_rotary,
    get_activation,
    get_norm,
    rotary_cos_sin,
)

# ----------------------------------------------------------------------------- NumPy references


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_gelu_exact(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def np_silu(x):
    return x / (1 + np.exp(-x))


def np_relu(x):
    return np.maximum(x, 0)


def np_rmsnorm(x, scale, epsilon):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + epsilon) * scale


def np_layernorm(x, gamma, beta, epsilon):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def np_rope(x, positions, max_wavelength=10000.0, scaling_factor=1.0):
    """RoFormer rotation, half-rotation layout (GPT-NeoX / Llama): x (b, s, heads, d)."""
    d = x.shape[-1]
    inv_freq = max_wavelength ** (-np.arange(0, d, 2) / d)  # (d/2,)
    angles = (positions[..., None] / scaling_factor) * inv_freq  # (b, s, d/2)
    cos = np.cos(np.concatenate([angles, angles], -1))[:, :, None, :]
    sin = np.sin(np.concatenate([angles, angles], -1))[:, :, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + np.concatenate([-x2, x1], -1) * sin


# keras-hub's RoPE defaults (the Llama ones): what kzoo's defaults must match.
HUB_ROPE = keras_hub.layers.RotaryEmbedding()
DEFAULT_ROPE = (HUB_ROPE.max_wavelength, HUB_ROPE.scaling_factor)


def np_attention(layer, x, padding_mask=None, positions=None, rope=DEFAULT_ROPE):
    """Causal (grouped-query) attention from the layer's weights, written head by head.

    `rope` is (max_wavelength, scaling_factor), used when the layer has `use_rope`."""
    x = x.astype("float64")
    b, s, _ = x.shape
    n, k, h = layer.num_heads, layer.num_kv_heads, layer.head_dim
    w, *bias = [np.asarray(v, "float64") for v in layer.query_key_value.get_weights()]
    qkv = x @ w + (bias[0] if bias else 0)
    q = qkv[..., : n * h].reshape(b, s, n, h)
    key = qkv[..., n * h: (n + k) * h].reshape(b, s, k, h)
    v = qkv[..., (n + k) * h:].reshape(b, s, k, h)
    if layer.use_rope:
        positions = np.tile(np.arange(s), (b, 1)) if positions is None else positions
        q, key = np_rope(q, positions, *rope), np_rope(key, positions, *rope)
    allowed = np.tril(np.ones((s, s), bool))[None]  # (1, query, key)
    if padding_mask is not None:
        allowed = allowed & np.asarray(padding_mask, bool)[:, None, :]
    out = np.zeros((b, s, n, h))
    for head in range(n):
        kv = head // (n // k)  # query heads share key/value heads in consecutive groups
        scores = np.einsum("bqd,bkd->bqk", q[:, :, head], key[:, :, kv]) / np.sqrt(h)
        scores = np.where(allowed, scores, -1e9)
        out[:, :, head] = np.einsum("bqk,bkd->bqd", np_softmax(scores), v[:, :, kv])
    wo, *bo = [np.asarray(t, "float64") for t in layer.output_dense.get_weights()]
    return out.reshape(b, s, n * h) @ wo + (bo[0] if bo else 0)


def np_feedforward(layer, x, act):
    w_up, *b_up = layer.up.get_weights()
    w_down, *b_down = layer.down.get_weights()
    hidden = x @ w_up + (b_up[0] if b_up else 0)
    if layer.gated:
        gate, up = np.split(hidden, 2, axis=-1)
        hidden = act(gate) * up
    else:
        hidden = act(hidden)
    return hidden @ w_down + (b_down[0] if b_down else 0)


def randomize(layer, seed=0, scale=0.5):
    """Replace every weight with random values (scales near 1, so norms stay well defined)."""
    rng = np.random.default_rng(seed)
    layer.set_weights([
        (1.0 + rng.normal(size=w.shape) * 0.3 if "scale" in p or "gamma" in p
         else rng.normal(size=w.shape) * scale).astype("float32")
        for w, p in zip(layer.get_weights(), [v.path for v in layer.weights])
    ])


def _x(rng, batch=2, seq=6, dim=16):
    return rng.normal(size=(batch, seq, dim)).astype("float32")


# ----------------------------------------------------------------------------- attention


# keras.ops.dot_product_attention on TensorFlow (Keras 3.15) fails on a single key/value head
# ("Expected dimension 4 at axis 2 ... [Op:Einsum]"), so attention_impl="fused" with
# num_kv_heads=1 raises there. Strict: this turns into a failure once it works.
_FUSED_MQA_TF = pytest.mark.xfail(
    keras.backend.backend() == "tensorflow", strict=True,
    reason="fused multi-query attention fails on TensorFlow (keras dot_product_attention)")


@pytest.mark.parametrize("impl, num_kv_heads, use_rope, use_bias", [
    ("einsum", 4, False, True), ("einsum", 2, True, False), ("einsum", 1, True, True),
    ("fused", 4, False, True), ("fused", 2, True, False),
    pytest.param("fused", 1, True, True, marks=_FUSED_MQA_TF),
], ids=["einsum-mha", "einsum-gqa-rope", "einsum-mqa-rope", "fused-mha", "fused-gqa-rope",
        "fused-mqa-rope"])
def test_attention_matches_numpy(rng, impl, num_kv_heads, use_rope, use_bias):
    attn = CausalSelfAttention(16, 4, num_kv_heads=num_kv_heads, use_rope=use_rope,
                               use_bias=use_bias, attention_impl=impl)
    x = _x(rng) * 4  # large enough that RoPE's default wavelength shows in the scores
    attn(x)
    randomize(attn)
    out = np.asarray(attn(x))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, np_attention(attn, x), atol=1e-4)
    # Padding: left-padded row 0 (slots 0-1) and right-padded row 1 (slot 5); real queries only.
    mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    out, ref = np.asarray(attn(x, padding_mask=mask)), np_attention(attn, x, padding_mask=mask)
    np.testing.assert_allclose(out[0, 2:], ref[0, 2:], atol=1e-4)
    np.testing.assert_allclose(out[1, :5], ref[1, :5], atol=1e-4)


def test_attention_rope_positions_and_scaling_match_numpy(rng):
    attn = CausalSelfAttention(16, 4, num_kv_heads=2, use_rope=True, rope_max_wavelength=50.0,
                               rope_scaling_factor=2.0)
    x = _x(rng)
    attn(x)
    randomize(attn, seed=1)
    positions = np.array([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]])
    np.testing.assert_allclose(attn(x, position_ids=positions),
                               np_attention(attn, x, positions=positions, rope=(50.0, 2.0)),
                               atol=2e-5)


@pytest.mark.parametrize("impl", ["einsum", "fused"])
def test_attention_with_cache_matches_numpy(rng, impl):
    """Prefill at slot 0, then one token at a time at slots 4, 5, against the full reference."""
    attn = CausalSelfAttention(16, 4, num_kv_heads=2, use_rope=True, attention_impl=impl)
    x = _x(rng)
    attn(x)
    randomize(attn, seed=2)
    ref = np_attention(attn, x)
    cache = (np.zeros((2, 2, 8, 4), "float32"),) * 2
    out, cache = attn(x[:, :4], cache=cache, cache_index=0)
    np.testing.assert_allclose(out, ref[:, :4], atol=2e-5)
    keys = np.asarray(cache[0])
    assert np.abs(keys[:, :, :4]).sum() > 0 and not keys[:, :, 4:].any()  # slots 0-3 written
    for t in (4, 5):
        out, cache = attn(x[:, t:t + 1], cache=cache, cache_index=t)
        np.testing.assert_allclose(out, ref[:, t:t + 1], atol=2e-5)


def test_attention_dropout_is_active_in_training_only_for_both_impls(rng):
    x = _x(rng)
    for impl in ("einsum", "auto"):
        attn = CausalSelfAttention(16, 4, dropout=0.5, attention_impl=impl)
        attn(x)
        randomize(attn)
        np.testing.assert_allclose(attn(x), np_attention(attn, x), atol=2e-5)
        np.testing.assert_allclose(attn(x, training=False), np_attention(attn, x), atol=2e-5)
        assert not np.allclose(attn(x, training=True), np_attention(attn, x), atol=1e-3)


def test_attention_uses_the_output_initializer_for_the_output_projection():
    attn = CausalSelfAttention(16, 4, kernel_initializer="ones", output_initializer="zeros")
    attn.build((None, None, 16))
    assert not attn.output_dense.kernel.numpy().any()
    assert (attn.query_key_value.kernel.numpy() == 1).all()
    plain = CausalSelfAttention(16, 4, kernel_initializer="ones")
    plain.build((None, None, 16))
    assert (plain.output_dense.kernel.numpy() == 1).all()


def test_attention_weight_shapes():
    attn = CausalSelfAttention(16, 4, num_kv_heads=2, use_bias=False)
    attn.build((None, None, 16))
    assert attn.query_key_value.kernel.shape == (16, (4 + 2 * 2) * 4)
    assert attn.output_dense.kernel.shape == (16, 16)
    assert len(attn.weights) == 2  # no biases


# ----------------------------------------------------------------------------- norms


def test_rmsnorm_matches_formula_with_learned_scale_and_epsilon(rng):
    x = rng.normal(size=(2, 3, 8)).astype("float32")
    for epsilon in (1e-6, 0.5):
        norm = RMSNorm(epsilon=epsilon)
        norm(x)
        randomize(norm)
        scale = norm.scale.numpy()
        assert not np.allclose(scale, 1.0)
        np.testing.assert_allclose(norm(x), np_rmsnorm(x, scale, epsilon), rtol=1e-5, atol=1e-6)
    tiny = x * 1e-3  # mean square ~1e-6: the default epsilon (Llama's 1e-6) matters here
    np.testing.assert_allclose(RMSNorm()(tiny), np_rmsnorm(tiny, 1.0, 1e-6), rtol=1e-4)
    assert RMSNorm().compute_output_shape((2, 3, 8)) == (2, 3, 8)


@pytest.mark.parametrize("use_bias", [True, False])
def test_get_norm_builds_the_norm_it_names_with_its_epsilon(rng, use_bias):
    x = rng.normal(size=(2, 3, 8)).astype("float32")
    layer = get_norm("layernorm", 0.5, use_bias=use_bias)
    layer(x)
    randomize(layer)
    gamma = layer.gamma.numpy()
    beta = layer.beta.numpy() if use_bias else 0.0
    np.testing.assert_allclose(layer(x), np_layernorm(x, gamma, beta, 0.5), rtol=1e-5,
                               atol=1e-5)
    rms = get_norm("rmsnorm", 0.5)
    assert isinstance(rms, RMSNorm)
    np.testing.assert_allclose(rms(x), np_rmsnorm(x, 1.0, 0.5), rtol=1e-5)
    assert get_norm("rmsnorm", 0.5, name="n").name == "n"


# ----------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("wavelength, scaling", [(10000.0, 1.0), (100.0, 4.0)])
def test_rope_matches_keras_hub_rotary_embedding(rng, wavelength, scaling):
    x = rng.normal(size=(2, 7, 3, 8)).astype("float32")
    positions = np.array([np.arange(7), np.arange(7) + 5])
    ours = apply_rotary(x, *rotary_cos_sin(positions, 8, wavelength, scaling))
    theirs = keras_hub.layers.RotaryEmbedding(max_wavelength=wavelength,
                                              scaling_factor=scaling)(x, positions=positions)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(ours, np_rope(x, positions, wavelength, scaling), atol=1e-5)


def test_rope_tables_and_defaults(rng):
    positions = np.array([[0, 3, 9]])
    cos, sin = rotary_cos_sin(positions, 8)
    assert tuple(cos.shape) == (1, 3, 1, 8)
    x = rng.normal(size=(1, 3, 2, 8)).astype("float32")
    np.testing.assert_allclose(apply_rotary(x, cos, sin), np_rope(x, positions), atol=1e-5)
    half = rotary_cos_sin(positions, 8, dtype="bfloat16")[0]
    assert keras.backend.standardize_dtype(half.dtype) == "bfloat16"
    with pytest.raises(ValueError, match="even"):
        rotary_cos_sin(positions, 7)


# ----------------------------------------------------------------------------- feed-forward

ACTIVATIONS = {"gelu": np_gelu_tanh, "gelu_exact": np_gelu_exact, "relu": np_relu,
               "silu": np_silu, "swiglu": np_silu, "geglu": np_gelu_tanh, "reglu": np_relu}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_feedforward_matches_numpy(rng, activation):
    ffn = FeedForward(8, 12, activation=activation, use_bias=activation in ("gelu", "geglu"))
    x = rng.normal(size=(2, 3, 8)).astype("float32")
    ffn(x)
    randomize(ffn)
    expected = np_feedforward(ffn, x.astype("float64"), ACTIVATIONS[activation])
    np.testing.assert_allclose(ffn(x), expected, rtol=1e-4, atol=1e-4)
    assert ffn.up.kernel.shape == (8, 12 * (2 if ffn.gated else 1))


def test_activation_functions_match_numpy():
    x = np.linspace(-4, 4, 17).astype("float32")
    for name in ("gelu", "gelu_exact", "relu", "silu"):
        np.testing.assert_allclose(get_activation(name)(x), ACTIVATIONS[name](x), atol=1e-5)
    up = np.linspace(2, -2, 17).astype("float32")
    for name in ("swiglu", "geglu", "reglu"):
        np.testing.assert_allclose(get_activation(name)(x, up), ACTIVATIONS[name](x) * up,
                                   atol=1e-5)


def test_feedforward_uses_the_output_initializer_for_down():
    ffn = FeedForward(8, 12, kernel_initializer="ones", output_initializer="zeros")
    ffn.build((None, None, 8))
    assert (ffn.up.kernel.numpy() == 1).all() and not ffn.down.kernel.numpy().any()


# ----------------------------------------------------------------------------- embeddings


def test_token_and_position_embeddings_look_up_rows(rng):
    emb = TokenEmbedding(10, 4, tie_weights=False)
    emb.build()
    randomize(emb)
    ids = np.array([[3, 0, 9], [1, 1, 2]])
    table = emb.embeddings.numpy()
    np.testing.assert_allclose(emb(ids), table[ids])
    h = rng.normal(size=(2, 3, 4)).astype("float32")
    np.testing.assert_allclose(emb(h, reverse=True), h @ emb.reverse_embeddings.numpy(),
                               atol=1e-5)
    assert not np.allclose(emb(h, reverse=True), h @ table.T, atol=1e-3)
    pos = PositionEmbedding(16, 4)
    pos.build()
    positions = np.array([[7, 2, 15]])
    np.testing.assert_allclose(pos(positions), pos.embeddings.numpy()[positions])
    assert pos.compute_output_shape((1, 3)) == (1, 3, 4)


def test_embeddings_draw_their_own_initial_values():
    """An unseeded initializer shared by two matrices must not give them the same values."""
    emb = TokenEmbedding(6, 6, tie_weights=False, embeddings_initializer="glorot_uniform")
    emb.build()
    assert not np.allclose(emb.embeddings.numpy(), emb.reverse_embeddings.numpy().T)
    a, b = PositionEmbedding(6, 4, "glorot_uniform"), PositionEmbedding(6, 4, "glorot_uniform")
    a.build(), b.build()
    assert not np.allclose(a.embeddings.numpy(), b.embeddings.numpy())


# ----------------------------------------------------------------------------- transformer block

GPT = dict(activation="gelu", norm="layernorm", use_bias=True)
LLAMA = dict(num_kv_heads=2, activation="swiglu", norm="rmsnorm", use_bias=False, use_rope=True)


def np_block(block, x, padding_mask=None, positions=None):
    """x + attn(norm1(x)), then + ffn(norm2(x)), every part from the NumPy references."""

    def norm(layer, h):
        if isinstance(layer, RMSNorm):
            return np_rmsnorm(h, layer.scale.numpy(), layer.epsilon)
        beta = layer.beta.numpy() if layer.center else 0.0
        return np_layernorm(h, layer.gamma.numpy(), beta, layer.epsilon)

    x = x.astype("float64")
    x = x + np_attention(block.attention, norm(block.attention_norm, x), padding_mask, positions)
    act = ACTIVATIONS[block.activation]
    return x + np_feedforward(block.feedforward, norm(block.feedforward_norm, x), act)


@pytest.mark.parametrize("kwargs", [GPT, LLAMA], ids=["gpt", "llama"])
def test_transformer_block_matches_numpy(rng, kwargs):
    block = TransformerBlock(16, 4, 24, norm_epsilon=0.1, dropout=0.5, **kwargs)
    x = _x(rng)
    block(x)
    randomize(block, scale=0.3)
    assert block.attention_norm.epsilon == block.feedforward_norm.epsilon == 0.1
    expected = np_block(block, x)
    np.testing.assert_allclose(block(x), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(block(x, training=False), expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(block(x, training=True), expected, atol=1e-2)  # dropout is on
    mask = np.array([[1, 1, 1, 1, 0, 0], [1] * 6])
    np.testing.assert_allclose(np.asarray(block(x, padding_mask=mask))[:, :4],
                               np_block(block, x, mask)[:, :4], rtol=1e-4, atol=1e-4)
    positions = np.array([[4, 5, 6, 7, 8, 9], [0, 2, 4, 6, 8, 10]])  # reach RoPE (llama)
    np.testing.assert_allclose(block(x, position_ids=positions),
                               np_block(block, x, positions=positions), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("branch", ["attention", "feedforward"])
def test_transformer_block_residual_dropout_is_active_in_training(rng, branch):
    """Each branch's residual dropout drops units in training: the other branch's output
    projection is zeroed (dropout of zeros is zeros) and attention-probability dropout is off,
    so only this branch's residual dropout can make training differ from inference."""
    block = TransformerBlock(16, 4, 24, dropout=0.5)
    x = _x(rng)
    block(x)
    block.attention.dropout_layer.rate = 0.0
    silent = block.feedforward.down if branch == "attention" else block.attention.output_dense
    silent.set_weights([np.zeros_like(w) for w in silent.get_weights()])
    a, b = np.asarray(block(x, training=True)), np.asarray(block(x))
    assert not np.allclose(a, b, atol=1e-3)
    block.residual_dropout.rate = 0.0
    np.testing.assert_allclose(block(x, training=True), b, atol=1e-5)


def test_transformer_block_passes_its_arguments_on():
    block = TransformerBlock(16, 4, 24, num_kv_heads=2, activation="geglu", norm="rmsnorm",
                             use_rope=True, rope_max_wavelength=500.0, rope_scaling_factor=2.0,
                             attention_impl="fused", dropout=0.25, use_bias=False,
                             output_initializer="zeros", kernel_initializer="ones")
    attn, ffn = block.attention, block.feedforward
    assert (attn.num_kv_heads, attn.use_rope, attn.rope_max_wavelength,
            attn.rope_scaling_factor, attn.attention_impl, attn.dropout, attn.use_bias) == (
        2, True, 500.0, 2.0, "fused", 0.25, False)
    assert (ffn.activation, ffn.intermediate_dim, ffn.use_bias) == ("geglu", 24, False)
    assert block.residual_dropout.rate == 0.25
    block.build((None, None, 16))
    assert not attn.output_dense.kernel.numpy().any() and not ffn.down.kernel.numpy().any()
    assert (attn.query_key_value.kernel.numpy() == 1).all() and (ffn.up.kernel.numpy() == 1).all()
    assert block.compute_output_shape((2, 3, 16)) == (2, 3, 16)
