"""The argument checks and initializer helpers every layer shares (`kzoo.layers._checks`)."""

import keras
import numpy as np
import pytest

from kzoo.layers import _checks


@pytest.mark.parametrize("value, upper_inclusive, ok", [
    (0.0, False, True), (0.5, False, True), (1.0, False, False), (-0.1, False, False),
    (0.0, True, True), (1.0, True, True), (1.5, True, False), (-0.1, True, False),
    (True, True, False), ("0.5", False, False), (0, False, True),
])
def test_fraction_bounds(value, upper_inclusive, ok):
    if ok:
        result = _checks.fraction("rate", value, upper_inclusive=upper_inclusive)
        assert result == float(value) and isinstance(result, float)
    else:
        bound = r"\[0, 1\]" if upper_inclusive else r"\[0, 1\)"
        with pytest.raises(ValueError, match=f"`rate` must be a number in {bound}"):
            _checks.fraction("rate", value, upper_inclusive=upper_inclusive)


def test_fraction_excludes_one_by_default():
    assert _checks.fraction("rate", 0.999) == 0.999
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        _checks.fraction("rate", 1.0)


@pytest.mark.parametrize("value, ok", [(1, True), (7, True), (0, False), (-2, False),
                                       (True, False), (2.0, False)])
def test_positive_int(value, ok):
    if ok:
        assert _checks.positive_int("n", value) == value
    else:
        with pytest.raises(ValueError, match="`n` must be a positive integer"):
            _checks.positive_int("n", value)


def test_divisible_and_one_of():
    _checks.divisible("hidden_dim", 12, "num_heads", 4)
    with pytest.raises(ValueError, match=r"Valid `num_heads` values for hidden_dim=12: "
                                         r"\[1, 2, 3, 4, 6, 12\]"):
        _checks.divisible("hidden_dim", 12, "num_heads", 5)
    _checks.one_of("norm", "rmsnorm", ["layernorm", "rmsnorm"])
    with pytest.raises(ValueError, match=r"Unknown `norm`: 'x'. Valid values: \['a', 'b'\]"):
        _checks.one_of("norm", "x", ["b", "a"])


def test_optional_initializer_keeps_none_and_resolves_the_rest():
    assert _checks.optional_initializer(None) is None
    assert _checks.serialize_optional_initializer(None) is None
    zeros = _checks.optional_initializer("zeros")
    assert isinstance(zeros, keras.initializers.Zeros)
    config = _checks.serialize_optional_initializer(zeros)
    assert isinstance(keras.initializers.deserialize(config), keras.initializers.Zeros)


def test_fresh_initializer_draws_anew_but_keeps_explicit_seeds():
    shared = keras.initializers.RandomNormal()
    a, b = _checks.fresh_initializer(shared), _checks.fresh_initializer(shared)
    assert a is not shared and type(a) is type(shared)
    assert not np.allclose(np.asarray(a((4, 4))), np.asarray(b((4, 4))))
    seeded = keras.initializers.RandomNormal(seed=3)
    np.testing.assert_array_equal(np.asarray(_checks.fresh_initializer(seeded)((3,))),
                                  np.asarray(_checks.fresh_initializer(seeded)((3,))))
    assert _checks.fresh_initializer("zeros") == "zeros"


def test_built_dense():
    layer = _checks.built_dense(6, 4, "ones", False, "float32", "proj")
    assert layer.built and layer.name == "proj" and layer.use_bias is False
    assert layer.kernel.shape == (4, 6) and (layer.kernel.numpy() == 1).all()
    with_bias = _checks.built_dense(6, 4, "ones", True, "float32", "proj")
    assert with_bias.bias.shape == (6,)
