import numpy as np

from kzoo.layers import apply_rotary, rotary_cos_sin


def test_rotation_preserves_norm_and_relative_position(rng):
    q = rng.normal(size=(1, 1, 1, 8)).astype("float32")
    k = rng.normal(size=(1, 1, 1, 8)).astype("float32")

    def rotated(x, p):
        return np.asarray(apply_rotary(x, *rotary_cos_sin(np.array([[p]]), 8)))

    np.testing.assert_allclose(np.linalg.norm(rotated(q, 7)), np.linalg.norm(q), rtol=1e-5)
    # RoPE's point: q.k depends only on the distance between the two positions.
    a = (rotated(q, 3) * rotated(k, 1)).sum()
    b = (rotated(q, 12) * rotated(k, 10)).sum()
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_position_zero_is_identity(rng):
    x = rng.normal(size=(2, 1, 3, 8)).astype("float32")
    np.testing.assert_allclose(apply_rotary(x, *rotary_cos_sin(np.zeros((2, 1)), 8)), x)
