"""Normalization layers and the registry that picks one by name."""

import keras
from keras import ops

from kzoo.layers._checks import one_of


@keras.saving.register_keras_serializable(package="kzoo")
class RMSNorm(keras.layers.Layer):
    """Root-mean-square normalization (Llama), computed in float32 whatever the policy.

    Args:
        epsilon: float. added to the mean square before the square root.
        scale_offset: float. the output is multiplied by `scale_offset + scale`. Gemma stores
            `w` and computes `x * (1 + w)`, so its weights load unchanged with 1.0; the scale
            then starts at `1 - scale_offset` (zeros for Gemma), so a fresh norm is the
            identity either way.
        **kwargs: passed on to `keras.layers.Layer` (`name`, `dtype`, ...).

    Example:
    ```python
    import numpy as np
    from kzoo.layers import RMSNorm
    y = RMSNorm()(np.ones((2, 3, 8), "float32"))
    ```
    """

    def __init__(self, epsilon: float = 1e-6, scale_offset: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        if isinstance(scale_offset, bool) or not isinstance(scale_offset, int | float):
            raise ValueError(
                f"`scale_offset` must be a number. Received: scale_offset={scale_offset!r}"
            )
        self.scale_offset = float(scale_offset)

    def build(self, input_shape):
        initializer = "ones"
        if self.scale_offset:
            initializer = keras.initializers.Constant(1.0 - self.scale_offset)
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],), initializer=initializer, trainable=True
        )

    def call(self, x):
        x = ops.cast(x, "float32")
        x = x * ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + self.epsilon)
        scale = ops.cast(self.scale, "float32")
        if self.scale_offset:  # Gemma's (1 + w), in float32 as transformers computes it
            scale = scale + self.scale_offset
        return ops.cast(x * scale, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon, "scale_offset": self.scale_offset})
        return config


def _layernorm(epsilon, use_bias, scale_offset=0.0, **kwargs):
    if scale_offset:
        raise ValueError(
            "`norm_scale_offset` applies to RMSNorm only (Gemma's (1 + w) weights); "
            f"received norm_scale_offset={scale_offset!r} with norm='layernorm'."
        )
    return keras.layers.LayerNormalization(epsilon=epsilon, center=use_bias, **kwargs)


def _rmsnorm(epsilon, use_bias, scale_offset=0.0, **kwargs):
    return RMSNorm(epsilon=epsilon, scale_offset=scale_offset, **kwargs)


_NORMS = {"layernorm": _layernorm, "rmsnorm": _rmsnorm}


def list_norms() -> list[str]:
    """Names accepted by `TransformerBlock(norm=...)` and `CausalLM(norm=...)`."""
    return sorted(_NORMS)


def get_norm(kind: str, epsilon: float, use_bias: bool = True, scale_offset: float = 0.0,
             **kwargs) -> keras.layers.Layer:
    """Build the normalization layer of the given kind.

    Args:
        kind: str. one of `list_norms()`.
        epsilon: float. numerical floor of the variance.
        use_bias: bool. whether LayerNorm has a learned shift (RMSNorm has none).
        scale_offset: float. RMSNorm's `scale_offset` (see `RMSNorm`); LayerNorm refuses
            anything but 0.
        **kwargs: passed on to the layer (`name`, `dtype`, ...).

    Example:
    ```python
    from kzoo.layers import get_norm
    norm = get_norm("rmsnorm", epsilon=1e-6)
    ```
    """
    one_of("norm", kind, list_norms())
    return _NORMS[kind](epsilon, use_bias, scale_offset, **kwargs)
