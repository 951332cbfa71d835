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
