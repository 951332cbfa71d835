"""Position-wise feed-forward network: a plain MLP (GPT) or a gated MLP (SwiGLU, Llama)."""

import keras
from keras import ops

from kzoo.layers._checks import (
    built_dense,
    optional_initializer,
    positive_int,
    serialize_optional_initializer,
)
from kzoo.layers.activations import get_activation, is_gated


@keras.saving.register_keras_serializable(package="kzoo")
class FeedForward(keras.layers.Layer):
    """Two-layer MLP applied at every position.

    Plain activations compute `down(act(up(x)))`; gated ones (`swiglu`, `geglu`, `reglu`)
    compute `down(act(gate(x)) * up(x))`, with gate and up fused into one matmul.

    Call arguments:
        x: float tensor. (batch, seq, hidden_dim).
        dense: optional callable. `dense(x, name) -> y` computes the projections ("up", "down")
            instead of the layer's own kernels (a decoder's prepared or int8 weights).

    Args:
        hidden_dim: int. input and output width.
        intermediate_dim: int. width of the hidden layer.
        activation: str. one of `kzoo.layers.list_activations()`.
        use_bias: bool. biases in both projections.
        kernel_initializer: initializer of the first projection.
        output_initializer: initializer of the output projection; default `kernel_initializer`.
        **kwargs: passed on to `keras.layers.Layer`.

    Example:
    ```python
    import numpy as np
    from kzoo.layers import FeedForward
    ffn = FeedForward(hidden_dim=8, intermediate_dim=32, activation="swiglu", use_bias=False)
    y = ffn(np.ones((2, 3, 8), "float32"))  # (2, 3, 8)
    ```
    """

    def __init__(self, hidden_dim: int, intermediate_dim: int, activation: str = "gelu",
                 use_bias: bool = True, kernel_initializer="glorot_uniform",
                 output_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        self.intermediate_dim = positive_int("intermediate_dim", intermediate_dim)
        self.gated = is_gated(activation)
        self.activation = activation
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = optional_initializer(output_initializer)
        self._activation_fn = get_activation(activation)

    def build(self, input_shape=None):
        width = self.intermediate_dim * (2 if self.gated else 1)
        self.up = built_dense(width, self.hidden_dim, self.kernel_initializer, self.use_bias,
                              self.dtype_policy, "up")
        self.down = built_dense(
            self.hidden_dim, self.intermediate_dim,
            self.output_initializer or self.kernel_initializer, self.use_bias,
            self.dtype_policy, "down",
        )

    def call(self, x, dense=None):
        h = self.up(x) if dense is None else dense(x, "up")
        if self.gated:
            gate, up = ops.split(h, 2, axis=-1)  # each (batch, seq, intermediate_dim)
            h = self._activation_fn(gate, up)
        else:
            h = self._activation_fn(h)
        return self.down(h) if dense is None else dense(h, "down")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "activation": self.activation,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "output_initializer": serialize_optional_initializer(self.output_initializer),
        })
        return config
