"""Rotary position embedding (RoFormer) as pure functions, in the half-rotation layout of
GPT-NeoX and Llama (the feature axis is split in two halves, not interleaved)."""

import math

from keras import ops

ROPE_SCALING_TYPES = ("llama3",)
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")


def check_rope_scaling(rope_scaling):
    """Validate a frequency-scaling dict for RoPE (or None); returns a plain-dict copy.

    The one type so far is Llama 3.1's "llama3": `{"type": "llama3", "factor": 32.0,
    "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings":
    8192}`. Linear position interpolation is the separate `scaling_factor`.

    Example:
    ```python
    from kzoo.layers.rotary import check_rope_scaling
    check_rope_scaling({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    ```
    """
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, dict) or rope_scaling.get("type") not in ROPE_SCALING_TYPES:
        raise ValueError(
            f"`rope_scaling` must be None or a dict whose 'type' is one of "
            f"{list(ROPE_SCALING_TYPES)}. Received: rope_scaling={rope_scaling!r}"
        )
    keys = set(rope_scaling) - {"type"}
    if keys != set(_LLAMA3_KEYS):
        raise ValueError(
            f"`rope_scaling` of type 'llama3' needs exactly the keys {list(_LLAMA3_KEYS)}. "
            f"Received: {sorted(keys)}"
        )
    values = {k: float(rope_scaling[k]) for k in _LLAMA3_KEYS}
    if min(values.values()) <= 0 or values["high_freq_factor"] <= values["low_freq_factor"]:
        raise ValueError(
            "`rope_scaling` values must be positive with high_freq_factor > low_freq_factor. "
            f"Received: {values}"
        )
    values["original_max_position_embeddings"] = int(values["original_max_position_embeddings"])
    return {"type": "llama3", **values}


def _llama3_frequencies(inv_freq, scaling):
    """Llama 3.1's frequency scaling: wavelengths shorter than `original / high_freq_factor`
    are kept, those longer than `original / low_freq_factor` are divided by `factor` (slowed
    down, as if trained on `factor` times longer texts), and the band between blends the two
    linearly in `original / wavelength`."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = float(scaling["original_max_position_embeddings"])
    wavelength = 2.0 * math.pi / inv_freq
    smooth = (original / wavelength - low) / (high - low)
    blended = (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = ops.where(wavelength > original / low, inv_freq / factor, inv_freq)
    medium = ops.logical_and(wavelength >= original / high, wavelength <= original / low)
    return ops.where(medium, blended, scaled)


def rotary_cos_sin(positions, head_dim: int, max_wavelength: float = 10000.0,
                   scaling_factor: float = 1.0, dtype="float32", rope_scaling=None):
    """Cos and sin tables for the given positions.

    Args:
        positions: int tensor. (batch, seq) absolute positions of the tokens.
        head_dim: int. size of each attention head; must be even.
        max_wavelength: float. the longest wavelength (RoPE's `base`).
        scaling_factor: float. positions are divided by it (linear position interpolation).
        dtype: str. dtype of the returned tables.
        rope_scaling: dict or None. frequency scaling, see `check_rope_scaling`.

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
    if rope_scaling is not None:
        inv_freq = _llama3_frequencies(inv_freq, rope_scaling)
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
    x = ops.convert_to_tensor(x)  # numpy in, as in the example: torch's `*` needs a tensor
    x1, x2 = ops.split(x, 2, axis=-1)
    rotated = ops.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin
