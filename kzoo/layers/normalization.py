"""Normalization layers and the registry that picks one by name."""

import keras
from keras import ops

from kzoo.layers._checks import one_of


@keras.saving.register_keras_serializable(package="kzoo")
class RMSNorm(keras.layers.Layer):
    """Root-mean-square normalization (Llama), computed in float32 whatever the policy.

    Args:
        epsilon: float. added to the mean square before the square root.
        **kwargs: passed on to `keras.layers.Layer` (`name`, `dtype`, ...).

    Example:
    ```python
    import numpy as np
    from kzoo.layers import RMSNorm
    y = RMSNorm()(np.ones((2, 3, 8), "float32"))
    ```
    """

    def __init__(self, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],), initializer="ones", trainable=True
        )

    def call(self, x):
        x = ops.cast(x, "float32")
        x = x * ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + self.epsilon)
        return ops.cast(x * ops.cast(self.scale, "float32"), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


def _layernorm(epsilon, use_bias, **kwargs):
    return keras.layers.LayerNormalization(epsilon=epsilon, center=use_bias, **kwargs)


def _rmsnorm(epsilon, use_bias, **kwargs):
    return RMSNorm(epsilon=epsilon, **kwargs)


_NORMS = {"layernorm": _layernorm, "rmsnorm": _rmsnorm}


def list_norms() -> list[str]:
    """Names accepted by `TransformerBlock(norm=...)` and `CausalLM(norm=...)`."""
    return sorted(_NORMS)


def get_norm(kind: str, epsilon: float, use_bias: bool = True, **kwargs) -> keras.layers.Layer:
    """Build the normalization layer of the given kind.

    Args:
        kind: str. one of `list_norms()`.
        epsilon: float. numerical floor of the variance.
        use_bias: bool. whether LayerNorm has a learned shift (RMSNorm has none).
        **kwargs: passed on to the layer (`name`, `dtype`, ...).

    Example:
    ```python
    from kzoo.layers import get_norm
    norm = get_norm("rmsnorm", epsilon=1e-6)
    ```
    """
    one_of("norm", kind, list_norms())
    return _NORMS[kind](epsilon, use_bias, **kwargs)
