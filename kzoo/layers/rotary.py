"""Rotary position embedding (RoFormer) as pure functions, in the half-rotation layout of
GPT-NeoX and Llama (the feature axis is split in two halves, not interleaved)."""

from keras import ops


def rotary_cos_sin(positions, head_dim: int, max_wavelength: float = 10000.0,
                   scaling_factor: float = 1.0, dtype="float32"):
    """Cos and sin tables for the given positions.

    Args:
        positions: int tensor. (batch, seq) absolute positions of the tokens.
        head_dim: int. size of each attention head; must be even.
        max_wavelength: float. the longest wavelength (RoPE's `base`).
        scaling_factor: float. positions are divided by it (linear position interpolation).
        dtype: str. dtype of the returned tables.

    Returns:
        `(cos, sin)`, each (batch, seq, 1, head_dim), ready to broadcast over heads.

    Example:
    ```python
    import numpy as np
    from kzoo.layers import rotary_cos_sin
    cos, sin = rotary_cos_sin(np.arange(4)[None], head_dim=8)
    ```
    """
    if head_dim % 2:
        raise ValueError(f"Rotary embedding needs an even `head_dim`. Received: {head_dim}")
    inv_freq = 1.0 / (max_wavelength ** (ops.arange(0, head_dim, 2, dtype="float32") / head_dim))
    positions = ops.cast(positions, "float32") / scaling_factor
    freqs = positions[..., None] * inv_freq  # (batch, seq, head_dim / 2)
    angles = ops.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # (batch, seq, 1, hd)
    return ops.cast(ops.cos(angles), dtype), ops.cast(ops.sin(angles), dtype)


def apply_rotary(x, cos, sin):
    """Rotate `x` (batch, seq, heads, head_dim) by the angles in `cos`/`sin` from `rotary_cos_sin`.

    Example:
    ```python
    import numpy as np
    from kzoo.layers import apply_rotary, rotary_cos_sin
    x = np.ones((1, 4, 2, 8), "float32")
    y = apply_rotary(x, *rotary_cos_sin(np.arange(4)[None], head_dim=8))
    ```
    """
    x1, x2 = ops.split(x, 2, axis=-1)
    rotated = ops.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin
