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


def _rms(x, epsilon=1e-6):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + epsilon)


@pytest.mark.parametrize("offset", [1.0, 0.5])
def test_rmsnorm_scale_offset_starts_as_identity_and_multiplies_by_offset_plus_scale(rng, offset):
    # Gemma stores w and computes x * (1 + w): a fresh norm (w = 1 - offset) is the plain RMSNorm.
    x = rng.normal(size=(2, 3, 8)).astype("float32")
    norm = RMSNorm(scale_offset=offset)
    np.testing.assert_allclose(norm(x), _rms(x), atol=1e-5)
    np.testing.assert_allclose(norm.scale.numpy(), np.full(8, 1.0 - offset), atol=0)
    w = rng.normal(size=8).astype("float32")
    norm.scale.assign(w)
    np.testing.assert_allclose(norm(x), _rms(x) * (offset + w), atol=1e-5)


def test_rmsnorm_has_one_trainable_scale_per_feature(rng):
    norm = RMSNorm()
    norm(rng.normal(size=(2, 3, 8)).astype("float32"))
    assert [(w.name, tuple(w.shape), w.trainable) for w in norm.weights] == [("scale", (8,), True)]
    assert (RMSNorm().epsilon, RMSNorm().scale_offset) == (1e-6, 0.0)


@pytest.mark.parametrize("bad", [True, "1.0", None])
def test_rmsnorm_refuses_a_scale_offset_that_is_not_a_number(bad):
    with pytest.raises(ValueError, match="`scale_offset` must be a number"):
        RMSNorm(scale_offset=bad)


def test_rmsnorm_computes_in_float32_whatever_the_floatx(rng):
    # A float32 layer under a bfloat16 floatx must not round its input or its scale.
    x = rng.normal(size=(2, 3, 8)).astype("float32")
    w = (1.0 + rng.normal(size=8) * 0.01).astype("float32")
    old = keras.config.floatx()
    keras.config.set_floatx("bfloat16")
    try:
        norm = RMSNorm(dtype="float32")
        norm.build(x.shape)
        norm.scale.assign(w)
        out = np.asarray(norm(x))
    finally:
        keras.config.set_floatx(old)
    np.testing.assert_allclose(out, _rms(x) * w, rtol=1e-5, atol=1e-6)


def test_get_norm_passes_its_arguments_on():
    assert get_norm("layernorm", 1e-5).center is True  # use_bias defaults to True
    layer = get_norm("layernorm", 1e-3, name="ln")
    assert (layer.epsilon, layer.name) == (1e-3, "ln")
    rms = get_norm("rmsnorm", 1e-4, scale_offset=1.0, name="rms")
    assert (rms.epsilon, rms.scale_offset, rms.name) == (1e-4, 1.0, "rms")
    assert get_norm("rmsnorm", 1e-4).scale_offset == 0.0
    with pytest.raises(ValueError, match=r"Unknown `norm`: 'batchnorm'"):
        get_norm("batchnorm", 1e-5)
    with pytest.raises(ValueError, match=r"^`norm_scale_offset` applies to RMSNorm only \(Gemma's "
                       r"\(1 \+ w\) weights\); received norm_scale_offset=1\.0 with "
                       r"norm='layernorm'\.$"):
        get_norm("layernorm", 1e-5, scale_offset=1.0)
