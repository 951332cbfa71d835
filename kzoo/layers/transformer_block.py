"""The pre-norm transformer decoder block: attention then feed-forward, each in a residual."""

import keras

from kzoo.layers._checks import (
    fraction,
    optional_initializer,
    positive_int,
    serialize_optional_initializer,
)
from kzoo.layers.attention import CausalSelfAttention
from kzoo.layers.feedforward import FeedForward
from kzoo.layers.normalization import get_norm
from kzoo.layers.rotary import check_rope_scaling


@keras.saving.register_keras_serializable(package="kzoo")
class TransformerBlock(keras.layers.Layer):
    """`x + attn(norm(x))`, then `x + ffn(norm(x))`: GPT-2 and Llama are both this block.

    With `post_norms` (Gemma 2/3) each branch is normed once more before the residual add:
    `x + post_attention_norm(attn(norm(x)))`, `x + post_feedforward_norm(ffn(norm(x)))`.

    Call arguments are those of `CausalSelfAttention` (`padding_mask`, `position_ids`, `cache`,
    `cache_index`, `training`, `attention_impl`); with a cache the block returns `(output,
    cache)`. `dense`: optional callable `dense(x, name) -> y` that computes every projection
    ("qkv", "attention_output", "up", "down") instead of the layers' own kernels, so a decoder
    with its weights in another layout or dtype runs this very block
    (`kzoo.generation.decoders`).

    Args:
        hidden_dim: int. model width.
        num_heads: int. query heads; divides `hidden_dim`.
        intermediate_dim: int. feed-forward hidden width.
        num_kv_heads: int or None. key/value heads (grouped-query attention); default `num_heads`.
        activation: str. feed-forward activation, e.g. "gelu" or "swiglu".
        norm: str. "layernorm" or "rmsnorm".
        norm_epsilon: float. the norms' epsilon.
        use_bias: bool. biases in projections and LayerNorm (the default of the three options
            below).
        qkv_bias: bool or None. biases of the query/key/value projection; None: `use_bias`.
        attention_output_bias: bool or None. bias of the attention output; None: `use_bias`.
        feedforward_bias: bool or None. biases of the feed-forward projections; None:
            `use_bias`.
        head_dim: int or None. size of each attention head; None: `hidden_dim // num_heads`.
        rope_scaling: dict or None. RoPE frequency scaling (see `CausalSelfAttention`).
        dropout: float. residual dropout, also used on attention probabilities.
        use_rope: bool. rotary position embedding in attention.
        rope_max_wavelength: float. RoPE base.
        rope_scaling_factor: float. RoPE linear position interpolation.
        attention_impl: str. see `CausalSelfAttention`.
        qk_norm: bool. per-head RMSNorm on queries and keys before RoPE (needs
            norm="rmsnorm"), see `CausalSelfAttention`.
        norm_scale_offset: float. `scale_offset` of every RMSNorm here (Gemma: 1.0).
        post_norms: bool. the extra norm after attention and after the feed-forward (Gemma).
        sliding_window: int or None. local attention window, see `CausalSelfAttention`.
        attention_scale: float or None. factor on q.k; None: `head_dim ** -0.5`.
        kernel_initializer: initializer of input projections.
        output_initializer: initializer of the two projections that write into the residual
            stream (GPT-2 scales them down by the depth); default `kernel_initializer`.
        **kwargs: passed on to `keras.layers.Layer`.

    Example:
    ```python
    import numpy as np
    from kzoo.layers import TransformerBlock
    block = TransformerBlock(hidden_dim=16, num_heads=4, intermediate_dim=64)
    y = block(np.random.rand(2, 5, 16).astype("float32"))  # (2, 5, 16)
    ```
    """

    def __init__(self, hidden_dim: int, num_heads: int, intermediate_dim: int,
                 num_kv_heads: int | None = None, activation: str = "gelu",
                 norm: str = "layernorm", norm_epsilon: float = 1e-5, use_bias: bool = True,
                 dropout: float = 0.0, use_rope: bool = False,
                 rope_max_wavelength: float = 10000.0, rope_scaling_factor: float = 1.0,
                 attention_impl: str = "auto", kernel_initializer="glorot_uniform",
                 output_initializer=None, qkv_bias: bool | None = None,
                 attention_output_bias: bool | None = None,
                 feedforward_bias: bool | None = None, head_dim: int | None = None,
                 rope_scaling: dict | None = None, qk_norm: bool = False,
                 norm_scale_offset: float = 0.0, post_norms: bool = False,
                 sliding_window: int | None = None, attention_scale: float | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        self.num_heads = num_heads
        self.intermediate_dim = positive_int("intermediate_dim", intermediate_dim)
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.activation = activation
        self.norm = norm
        self.norm_epsilon = norm_epsilon
        self.use_bias = use_bias
        self.feedforward_bias = use_bias if feedforward_bias is None else bool(feedforward_bias)
        self.dropout = fraction("dropout", dropout)
        self.use_rope = use_rope
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.attention_impl = attention_impl
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = optional_initializer(output_initializer)
        if qk_norm and norm != "rmsnorm":
            # Qwen3 and Gemma 3 norm each head with an RMSNorm; no checkpoint has a per-head
            # LayerNorm shared across heads, so there is nothing to be exact against.
            raise ValueError(
                f"`qk_norm=True` needs norm='rmsnorm' (a per-head RMSNorm over head_dim, as in "
                f"Qwen3 and Gemma 3); received norm={norm!r}."
            )
        self.norm_scale_offset = norm_scale_offset
        if not isinstance(post_norms, bool):
            raise ValueError(f"`post_norms` must be True or False. Received: {post_norms!r}")
        self.post_norms = post_norms
        # Sub-layers are created here so that bad arguments fail at construction time.
        common = dict(
            kernel_initializer=self.kernel_initializer,
            output_initializer=self.output_initializer, dtype=self.dtype_policy,
        )
        self.attention = CausalSelfAttention(
            hidden_dim, num_heads, self.num_kv_heads, use_bias=use_bias, dropout=dropout,
            use_rope=use_rope, rope_max_wavelength=rope_max_wavelength,
            rope_scaling_factor=rope_scaling_factor, attention_impl=attention_impl,
            qkv_bias=qkv_bias, output_bias=attention_output_bias, head_dim=head_dim,
            rope_scaling=rope_scaling, qk_norm=qk_norm, qk_norm_epsilon=norm_epsilon,
            norm_scale_offset=norm_scale_offset, sliding_window=sliding_window,
            attention_scale=attention_scale, name="attention", **common,
        )
        self.feedforward = FeedForward(
            hidden_dim, intermediate_dim, activation=activation, use_bias=self.feedforward_bias,
            name="feedforward", **common,
        )
        def make_norm(name):
            return get_norm(norm, norm_epsilon, use_bias, norm_scale_offset,
                            dtype=self.dtype_policy, name=name)

        self.attention_norm = make_norm("attention_norm")
        self.feedforward_norm = make_norm("feedforward_norm")
        self.post_attention_norm = self.post_feedforward_norm = None
        if post_norms:
            self.post_attention_norm = make_norm("post_attention_norm")
            self.post_feedforward_norm = make_norm("post_feedforward_norm")
        self.residual_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        shape = (None, None, self.hidden_dim)
        for layer in (self.attention_norm, self.attention, self.feedforward_norm,
                      self.feedforward, self.post_attention_norm, self.post_feedforward_norm):
            if layer is not None:
                layer.build(shape)

    def call(self, x, padding_mask=None, position_ids=None, cache=None, cache_index=None,
             training=None, dense=None, attention_impl=None):
        h = self.attention(
            self.attention_norm(x), padding_mask=padding_mask, position_ids=position_ids,
            cache=cache, cache_index=cache_index, training=training, dense=dense,
            attention_impl=attention_impl,
        )
        if cache is not None:
            h, cache = h
        if self.post_norms:
            h = self.post_attention_norm(h)
        x = x + self.residual_dropout(h, training=training)
        h = self.feedforward(self.feedforward_norm(x), dense=dense)
        if self.post_norms:
            h = self.post_feedforward_norm(h)
        x = x + self.residual_dropout(h, training=training)
        return x if cache is None else (x, cache)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "num_kv_heads": self.num_kv_heads,
            "activation": self.activation,
            "norm": self.norm,
            "norm_epsilon": self.norm_epsilon,
            "use_bias": self.use_bias,
            "qkv_bias": self.attention.qkv_bias,
            "attention_output_bias": self.attention.output_bias,
            "feedforward_bias": self.feedforward_bias,
            "head_dim": self.attention.head_dim,
            "dropout": self.dropout,
            "use_rope": self.use_rope,
            "rope_max_wavelength": self.rope_max_wavelength,
            "rope_scaling_factor": self.rope_scaling_factor,
            "rope_scaling": check_rope_scaling(self.attention.rope_scaling),
            "attention_impl": self.attention_impl,
            "qk_norm": self.attention.qk_norm,
            "norm_scale_offset": self.norm_scale_offset,
            "post_norms": self.post_norms,
            "sliding_window": self.attention.sliding_window,
            "attention_scale": self.attention.attention_scale,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "output_initializer": serialize_optional_initializer(self.output_initializer),
        })
        return config
