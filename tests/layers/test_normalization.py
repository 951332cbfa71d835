import keras
import numpy as np
import pytest

from kzoo.layers import RMSNorm, get_norm


def test_rmsnorm_formula(rng, check_roundtrip):
    x = rng.normal(size=(2, 3, 8)).astype("float32")
    norm = RMSNorm(epsilon=1e-6)
    expected = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(norm(x), expected, atol=1e-5)
    check_roundtrip(norm, x)


def test_rmsnorm_bfloat16_computes_in_float32(rng):
    x = rng.normal(size=(2, 3, 8)).astype("float32") * 100
    out = RMSNorm(dtype="mixed_bfloat16")(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    expected = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(out, "float32"), expected, rtol=1e-2)


def test_fit_changes_all_weights(rng, check_fit_changes_all_weights):
    check_fit_changes_all_weights(RMSNorm(), rng.normal(size=(4, 3, 8)).astype("float32"))


def test_get_norm():
    assert isinstance(get_norm("layernorm", 1e-5), keras.layers.LayerNormalization)
    assert get_norm("layernorm", 1e-5, use_bias=False).center is False
    with pytest.raises(ValueError, match="rmsnorm"):
        get_norm("batchnorm", 1e-5)
