"""Learning-rate schedules: warmup, cosine shape, registry, serialization."""

import keras
import numpy as np
import pytest

from kzoo.training import schedules
from kzoo.training.schedules import WarmupSchedule


def values(s, steps):
    return np.array([float(s(i)) for i in steps])


def test_cosine_matches_nanogpt_formula():
    s = WarmupSchedule("cosine", 1e-3, warmup_steps=100, decay_steps=2000, min_lr=1e-4)
    steps = [0, 50, 100, 1050, 2000, 2500]
    ratio = (np.array(steps[2:]) - 100) / 1900
    expected = 1e-4 + 0.5 * (1 + np.cos(np.pi * np.clip(ratio, 0, 1))) * 9e-4
    warm = [1e-3 * 1 / 101, 1e-3 * 51 / 101]  # nanoGPT: lr * (it + 1) / (warmup + 1)
    np.testing.assert_allclose(values(s, steps), [*warm, *expected], rtol=1e-5, atol=1e-9)


def test_linear_and_constant():
    lin = WarmupSchedule("linear", 1.0, 0, 10, 0.0)
    np.testing.assert_allclose(values(lin, [0, 5, 10, 20]), [1.0, 0.5, 0.0, 0.0], atol=1e-6)
    const = WarmupSchedule("constant", 2.0, 4, 10)
    np.testing.assert_allclose(values(const, [1, 4, 9]), [0.8, 2.0, 2.0])


def test_registry_and_errors():
    assert sorted(schedules.SCHEDULES) == ["constant", "cosine", "linear"]
    with pytest.raises(ValueError, match=r"valid schedules: \['constant', 'cosine', 'linear'\]"):
        WarmupSchedule("step", 1.0, 1, 2)


def test_json_round_trip():
    s = WarmupSchedule("cosine", 3e-4, 10, 100, 3e-5)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(s)
    )
    assert restored.get_config() == s.get_config()
    assert float(restored(42)) == pytest.approx(float(s(42)))


@pytest.mark.parametrize("warmup, decay, min_lr", [(100, 2000, 1e-4), (0, 50, 0.0), (7, 8, 2e-4)])
def test_decay_matches_keras_own_schedules(warmup, decay, min_lr):
    # After warmup, cosine is Keras' CosineDecay (alpha = min_lr / peak) and linear is
    # PolynomialDecay with power 1, both counted from the end of warmup; past `decay_steps`
    # both hold min_lr.
    peak = 1e-3
    steps = sorted({warmup, warmup + 1, (warmup + decay) // 2, decay - 1, decay, decay + 1,
                    3 * decay})
    steps = [s for s in steps if s >= warmup]
    cosine = keras.optimizers.schedules.CosineDecay(peak, decay - warmup, alpha=min_lr / peak)
    linear = keras.optimizers.schedules.PolynomialDecay(peak, decay - warmup, min_lr, power=1.0)
    since = [s - warmup for s in steps]
    np.testing.assert_allclose(values(WarmupSchedule("cosine", peak, warmup, decay, min_lr),
                                      steps), values(cosine, since), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(values(WarmupSchedule("linear", peak, warmup, decay, min_lr),
                                      steps), values(linear, since), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_decay_without_room_drops_to_min_lr_at_once(name):
    # decay_steps == warmup_steps: the peak at the end of warmup, min_lr on the next step.
    s = WarmupSchedule(name, 1.0, 10, 10, 0.25)
    np.testing.assert_allclose(values(s, [9, 10, 11, 12]), [10 / 11, 1.0, 0.25, 0.25],
                               rtol=1e-6)


def test_min_lr_defaults_to_zero():
    for name in ("cosine", "linear"):
        s = WarmupSchedule(name, 1.0, 2, 10)
        assert s.get_config()["min_lr"] == 0.0
        assert float(s(10)) == pytest.approx(0.0, abs=1e-7)
        assert float(s(6)) == pytest.approx(0.5, abs=1e-6)  # halfway through the decay
    assert float(WarmupSchedule("constant", 2.0, 4, 10)(50)) == 2.0


def test_steps_are_counted_in_float32_whatever_the_default_float():
    # float16 holds integers exactly only up to 2048: step 3001 would read as 3000.
    s = WarmupSchedule("linear", 1.0, 0, 6000, 0.0)
    old = keras.config.floatx()
    keras.config.set_floatx("float16")
    try:
        lr = s(3001)
    finally:
        keras.config.set_floatx(old)
    assert keras.backend.standardize_dtype(lr.dtype) == "float32"
    assert float(lr) == pytest.approx(1.0 - 3001 / 6000, rel=1e-6)
