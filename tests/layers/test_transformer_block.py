import numpy as np
import pytest

from kzoo.layers import TransformerBlock

LLAMA = dict(num_kv_heads=2, activation="swiglu", norm="rmsnorm", use_bias=False, use_rope=True)


@pytest.mark.parametrize("kwargs", [{}, LLAMA], ids=["gpt", "llama"])
def test_cached_equals_uncached(rng, kwargs):
    block = TransformerBlock(16, 4, 32, **kwargs)
    x = rng.normal(size=(2, 7, 16)).astype("float32")
    full = np.asarray(block(x))
    cache = (np.zeros((2, block.num_kv_heads, 8, 4), "float32"),) * 2
    out, cache = block(x[:, :5], cache=cache, cache_index=0)
    np.testing.assert_allclose(out, full[:, :5], atol=1e-5)
    for t in (5, 6):
        out, cache = block(x[:, t : t + 1], cache=cache, cache_index=t)
        np.testing.assert_allclose(out, full[:, t : t + 1], atol=1e-5)


@pytest.mark.parametrize("kwargs", [{}, LLAMA], ids=["gpt", "llama"])
def test_roundtrip_and_training(rng, check_roundtrip, check_fit_changes_all_weights, kwargs):
    x = rng.normal(size=(2, 5, 16)).astype("float32")
    check_roundtrip(TransformerBlock(16, 4, 32, dropout=0.1, **kwargs), x)
    check_fit_changes_all_weights(TransformerBlock(16, 4, 32, **kwargs), x)


def test_no_bias_means_no_bias_weights():
    block = TransformerBlock(16, 4, 32, use_bias=False)
    block.build((None, None, 16))
    names = [w.path for w in block.weights]
    assert not any(name.endswith("bias") or name.endswith("beta") for name in names), names


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="hidden_dim"):
        TransformerBlock(10, 4, 32)
    with pytest.raises(ValueError, match="norm"):
        TransformerBlock(16, 4, 32, norm="groupnorm")


@pytest.mark.parametrize("kwargs", [{}, LLAMA], ids=["gpt", "llama"])
def test_dense_hook_computes_every_projection(rng, kwargs):
    """`dense(h, name)` replaces the four projections: the decoders' prepared and int8
    weights run through this very block (issue 28)."""
    block = TransformerBlock(16, 4, 32, **kwargs)
    x = rng.normal(size=(2, 5, 16)).astype("float32")
    want = np.asarray(block(x))
    layers = {"qkv": block.attention.query_key_value,
              "attention_output": block.attention.output_dense,
              "up": block.feedforward.up, "down": block.feedforward.down}
    seen = []

    def own(h, name):
        seen.append(name)
        return layers[name](h)

    np.testing.assert_allclose(block(x, dense=own, attention_impl="einsum"), want, atol=1e-5)
    assert seen == ["qkv", "attention_output", "up", "down"]
    doubled = np.asarray(block(x, dense=lambda h, name: 2 * layers[name](h)))
    assert np.abs(doubled - want).max() > 1e-3  # the hook's output is what the block uses


def test_attention_impl_override_is_checked(rng):
    block = TransformerBlock(16, 4, 32)
    with pytest.raises(ValueError, match="attention_impl"):
        block(rng.normal(size=(1, 3, 16)).astype("float32"), attention_impl="flash")
