import keras
import numpy as np
import pytest

from kzoo.layers import CausalSelfAttention


def _x(rng, batch=2, seq=6, dim=16):
    return rng.normal(size=(batch, seq, dim)).astype("float32")


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("use_rope", [False, True])
def test_cached_equals_uncached(rng, num_kv_heads, use_rope):
    attn = CausalSelfAttention(16, 4, num_kv_heads=num_kv_heads, use_rope=use_rope)
    x = _x(rng)
    full = np.asarray(attn(x))
    cache = (np.zeros((2, num_kv_heads, 10, 4), "float32"),) * 2
    prefill, cache = attn(x[:, :4], cache=cache, cache_index=0)
    np.testing.assert_allclose(prefill, full[:, :4], atol=1e-5)
    for t in (4, 5):
        step, cache = attn(x[:, t : t + 1], cache=cache, cache_index=t)
        np.testing.assert_allclose(step, full[:, t : t + 1], atol=1e-5)


def test_causal_future_does_not_leak(rng):
    attn = CausalSelfAttention(16, 4)
    x = _x(rng)
    changed = x.copy()
    changed[:, 4:] += 10.0
    np.testing.assert_allclose(attn(x)[:, :4], attn(changed)[:, :4], atol=1e-6)
    assert not np.allclose(attn(x)[:, 4:], attn(changed)[:, 4:])


def test_padding_mask_hides_padded_keys(rng):
    attn = CausalSelfAttention(16, 4, num_kv_heads=2)
    x = _x(rng)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    # Left-shifted tokens in the masked slots must not change the outputs of real tokens.
    noisy = x.copy()
    noisy[0, 4:] = rng.normal(size=(2, 16))
    out = np.asarray(attn(x, padding_mask=mask))
    np.testing.assert_allclose(attn(noisy, padding_mask=mask)[0, :4], out[0, :4], atol=1e-6)
    # Left padding: masked keys at the start must be ignored by later queries.
    left = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    noisy = x.copy()
    noisy[0, :2] += 5.0
    np.testing.assert_allclose(
        attn(noisy, padding_mask=left)[0, 2:], attn(x, padding_mask=left)[0, 2:], atol=1e-6
    )


def test_grouped_query_matches_repeated_heads(rng):
    """GQA with 2 kv heads == MHA whose key/value heads are the kv heads repeated."""
    gqa = CausalSelfAttention(16, 4, num_kv_heads=2, use_rope=True)
    mha = CausalSelfAttention(16, 4, num_kv_heads=4, use_rope=True)
    x = _x(rng)
    gqa(x), mha(x)
    kernel, bias = gqa.query_key_value.get_weights()
    q, k, v = kernel[:, :16], kernel[:, 16:24], kernel[:, 24:]
    rep = lambda w: np.repeat(w.reshape(16, 2, 4), 2, axis=1).reshape(16, 16)  # noqa: E731
    qb, kb, vb = bias[:16], bias[16:24], bias[24:]
    repb = lambda b: np.repeat(b.reshape(2, 4), 2, axis=0).reshape(16)  # noqa: E731
    mha.query_key_value.set_weights(
        [np.concatenate([q, rep(k), rep(v)], 1), np.concatenate([qb, repb(kb), repb(vb)])]
    )
    mha.output_dense.set_weights(gqa.output_dense.get_weights())
    np.testing.assert_allclose(gqa(x), mha(x), atol=1e-5)


def test_fused_matches_einsum(rng):
    einsum = CausalSelfAttention(16, 4, num_kv_heads=2, use_rope=True, attention_impl="einsum")
    fused = CausalSelfAttention(16, 4, num_kv_heads=2, use_rope=True, attention_impl="fused")
    x = _x(rng)
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    einsum(x), fused(x)
    fused.set_weights(einsum.get_weights())
    np.testing.assert_allclose(
        fused(x, padding_mask=mask)[:, :5], einsum(x, padding_mask=mask)[:, :5], atol=1e-5
    )


def test_dropout_only_in_training(rng):
    attn = CausalSelfAttention(16, 4, dropout=0.5)
    x = _x(rng)
    np.testing.assert_allclose(attn(x), attn(x), atol=0)
    assert not np.allclose(attn(x, training=True), attn(x))


def test_roundtrip(rng, check_roundtrip):
    attn = CausalSelfAttention(
        16, 4, num_kv_heads=2, use_rope=True, dropout=0.1, use_bias=False,
        output_initializer=keras.initializers.RandomNormal(stddev=0.01),
    )
    check_roundtrip(attn, _x(rng))


def test_fit_changes_all_weights(rng, check_fit_changes_all_weights):
    check_fit_changes_all_weights(CausalSelfAttention(16, 4, num_kv_heads=2), _x(rng))


def test_mixed_bfloat16(rng):
    attn = CausalSelfAttention(16, 4, num_kv_heads=2, use_rope=True, dtype="mixed_bfloat16")
    out = attn(_x(rng))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert attn.query_key_value.kernel.dtype == "float32"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_dim=10, num_heads=4), "hidden_dim"),
        (dict(hidden_dim=16, num_heads=4, num_kv_heads=3), "num_kv_heads"),
        (dict(hidden_dim=16, num_heads=0), "num_heads"),
        (dict(hidden_dim=16, num_heads=4, dropout=1.5), "dropout"),
        (dict(hidden_dim=16, num_heads=4, attention_impl="flash"), "attention_impl"),
        (dict(hidden_dim=12, num_heads=4, use_rope=True), "even"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CausalSelfAttention(**kwargs)


def test_cache_without_index(rng):
    attn = CausalSelfAttention(16, 4)
    with pytest.raises(ValueError, match="cache_index"):
        attn(_x(rng), cache=(np.zeros((2, 4, 8, 4), "float32"),) * 2)
    with pytest.raises(ValueError, match="pair"):
        attn(_x(rng), cache=np.zeros((2, 2, 4, 8, 4), "float32"), cache_index=0)
