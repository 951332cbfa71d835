"""Causal multi-head self-attention with grouped-query heads, RoPE and a KV cache."""

import math

import keras
from keras import ops

from kzoo import backend
from kzoo.layers._checks import (
    built_dense,
    divisible,
    fraction,
    one_of,
    optional_initializer,
    positive_int,
    serialize_optional_initializer,
)
from kzoo.layers.normalization import RMSNorm
from kzoo.layers.rotary import apply_rotary, check_rope_scaling, rotary_cos_sin

ATTENTION_IMPLS = ("auto", "einsum", "fused")

# Large but finite: a fully masked row (a left-padding query) softmaxes to uniform, never to NaN.
_MASK_VALUE = -1e9


@keras.saving.register_keras_serializable(package="kzoo")
class CausalSelfAttention(keras.layers.Layer):
    """Causal self-attention: multi-head, grouped-query or multi-query.

    Every position attends to itself and the positions before it, never after. Keys and values
    have `num_kv_heads` heads shared by groups of `num_heads // num_kv_heads` query heads
    (`num_kv_heads == num_heads`: multi-head; `1`: multi-query).

    Call arguments:
        x: float tensor. (batch, seq, hidden_dim).
        padding_mask: optional bool/int tensor. (batch, keys), 1 for real tokens: keys are the
            `seq` inputs, or the cache's slots when a cache is given.
        position_ids: optional int tensor. (batch, seq) positions for RoPE; default
            `cache_index + arange(seq)`.
        cache: optional pair of tensors. `(keys, values)`, each (batch, num_kv_heads,
            max_length, head_dim), from earlier calls; the new ones are written at
            `cache_index`. Head-major, so decoding updates them in place and attends without
            transposing the cache.
        cache_index: int or scalar int tensor. the cache slot of `x[:, 0]`.
        training: bool. enables dropout.
        dense: optional callable. `dense(x, name) -> y` computes the projections instead of
            the layer's own kernels, `name` being "qkv" or "attention_output": how a decoder
            runs this layer with its weights in another layout or dtype
            (`kzoo.generation.decoders`).
        attention_impl: optional str. overrides the layer's `attention_impl` for this call.

    Returns the output (batch, seq, hidden_dim), and with a cache the pair `(output, cache)`.

    Args:
        hidden_dim: int. model width; divisible by `num_heads` unless `head_dim` is given.
        num_heads: int. query heads.
        num_kv_heads: int or None. key/value heads; divides `num_heads`. Default: `num_heads`.
        use_bias: bool. biases in the projections (the default of the two options below).
        qkv_bias: bool or None. biases in the query/key/value projection (Qwen2 has them
            while its output projection has none); None: `use_bias`.
        output_bias: bool or None. bias in the output projection; None: `use_bias`.
        head_dim: int or None. size of each head; None: `hidden_dim // num_heads`.
            Some models set it apart from the width (Mistral NeMo: 32 heads of 128 in 5,120).
        dropout: float. dropout rate of the attention probabilities, in [0, 1).
        use_rope: bool. rotate queries and keys by their positions (rotary embedding).
        rope_max_wavelength: float. RoPE's base wavelength.
        rope_scaling_factor: float. RoPE linear position interpolation factor.
        rope_scaling: dict or None. RoPE frequency scaling (Llama 3.1's "llama3"), see
            `kzoo.layers.rotary.check_rope_scaling`.
        qk_norm: bool. an RMSNorm over `head_dim` on every query and key head after the
            projection and before RoPE (Qwen3, Gemma 3); one scale shared by the heads.
        qk_norm_epsilon: float. that norm's epsilon.
        norm_scale_offset: float. that norm's `scale_offset` (Gemma: 1.0, see `RMSNorm`).
        sliding_window: int or None. local attention: query position t sees keys t - window + 1
            .. t (transformers' convention, `kv_idx > q_idx - window`); None: every earlier key.
        attention_scale: float or None. factor on q.k; None: `head_dim ** -0.5` (Gemma 3:
            `query_pre_attn_scalar ** -0.5`).
        attention_impl: str. "einsum" (query heads grouped under their key/value head: no
            copies of K and V, and attention dropout), "fused" (`keras.ops.dot_product_attention`,
            which reaches cuDNN/flash kernels on the JAX and torch backends) or "auto" (einsum
            on TensorFlow, where the two train within 3% of each other on CPU:
            `benchmarks/model_speed.py`; fused elsewhere unless attention dropout is active).
        kernel_initializer: initializer of the query/key/value projection.
        output_initializer: initializer of the output projection; default `kernel_initializer`.
        **kwargs: passed on to `keras.layers.Layer`.

    Example:
    ```python
    import numpy as np
    from kzoo.layers import CausalSelfAttention
    attn = CausalSelfAttention(hidden_dim=16, num_heads=4, num_kv_heads=2, use_rope=True)
    y = attn(np.random.rand(2, 5, 16).astype("float32"))  # (2, 5, 16)
    ```
    """

    def __init__(self, hidden_dim: int, num_heads: int, num_kv_heads: int | None = None,
                 use_bias: bool = True, dropout: float = 0.0, use_rope: bool = False,
                 rope_max_wavelength: float = 10000.0, rope_scaling_factor: float = 1.0,
                 attention_impl: str = "auto", kernel_initializer="glorot_uniform",
                 output_initializer=None, qkv_bias: bool | None = None,
                 output_bias: bool | None = None, head_dim: int | None = None,
                 rope_scaling: dict | None = None, qk_norm: bool = False,
                 qk_norm_epsilon: float = 1e-6, norm_scale_offset: float = 0.0,
                 sliding_window: int | None = None, attention_scale: float | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        self.num_heads = positive_int("num_heads", num_heads)
        self.num_kv_heads = positive_int(
            "num_kv_heads", num_heads if num_kv_heads is None else num_kv_heads
        )
        if head_dim is None:
            divisible("hidden_dim", hidden_dim, "num_heads", num_heads)
            head_dim = hidden_dim // num_heads
        self.head_dim = positive_int("head_dim", head_dim)
        divisible("num_heads", num_heads, "num_kv_heads", self.num_kv_heads)
        self.use_bias = use_bias
        self.qkv_bias = use_bias if qkv_bias is None else bool(qkv_bias)
        self.output_bias = use_bias if output_bias is None else bool(output_bias)
        self.rope_scaling = check_rope_scaling(rope_scaling)
        self.dropout = fraction("dropout", dropout)
        self.use_rope = use_rope
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        one_of("attention_impl", attention_impl, ATTENTION_IMPLS)
        self.attention_impl = attention_impl
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = optional_initializer(output_initializer)
        if use_rope and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head size; head_dim = {self.head_dim}.")
        if not isinstance(qk_norm, bool):
            raise ValueError(f"`qk_norm` must be True or False. Received: qk_norm={qk_norm!r}")
        self.qk_norm = qk_norm
        self.qk_norm_epsilon = qk_norm_epsilon
        self.norm_scale_offset = norm_scale_offset
        self.sliding_window = (None if sliding_window is None
                               else positive_int("sliding_window", sliding_window))
        if attention_scale is not None:
            ok = isinstance(attention_scale, int | float) and not isinstance(attention_scale, bool)
            if not ok or attention_scale <= 0:
                raise ValueError("`attention_scale` must be a positive number or None. "
                                 f"Received: attention_scale={attention_scale!r}")
            attention_scale = float(attention_scale)
        self.attention_scale = attention_scale
        self.scale = attention_scale or 1.0 / math.sqrt(self.head_dim)
        self.query_norm = self.key_norm = None
        if qk_norm:
            self.query_norm, self.key_norm = (
                RMSNorm(qk_norm_epsilon, scale_offset=norm_scale_offset, dtype=self.dtype_policy,
                        name=name)
                for name in ("query_norm", "key_norm")
            )

    def build(self, input_shape=None):
        heads = self.num_heads + 2 * self.num_kv_heads
        # One fused projection for queries, keys and values: a single matmul instead of three.
        self.query_key_value = built_dense(
            heads * self.head_dim, self.hidden_dim, self.kernel_initializer, self.qkv_bias,
            self.dtype_policy, "query_key_value",
        )
        self.output_dense = built_dense(
            self.hidden_dim, self.num_heads * self.head_dim,
            self.output_initializer or self.kernel_initializer, self.output_bias,
            self.dtype_policy, "attention_output",
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        if self.qk_norm:
            self.query_norm.build((None, None, self.num_heads, self.head_dim))
            self.key_norm.build((None, None, self.num_kv_heads, self.head_dim))

    def _use_fused(self, training, attention_impl=None):
        impl = self.attention_impl
        if attention_impl is not None:
            one_of("attention_impl", attention_impl, ATTENTION_IMPLS)
            impl = attention_impl
        if impl == "auto":
            return keras.backend.backend() != "tensorflow" and not (training and self.dropout)
        return impl == "fused"

    def call(self, x, padding_mask=None, position_ids=None, cache=None, cache_index=None,
             training=None, dense=None, attention_impl=None):
        if cache is not None:
            if cache_index is None:
                raise ValueError("`cache_index` is required when `cache` is given.")
            if not isinstance(cache, tuple | list) or len(cache) != 2:
                raise ValueError(
                    "`cache` must be a (keys, values) pair, each (batch, num_kv_heads, "
                    f"max_length, head_dim). Received: {type(cache).__name__}"
                )
        start = 0 if cache is None else cache_index
        qkv = self.query_key_value(x) if dense is None else dense(x, "qkv")
        fused = self._use_fused(training, attention_impl)
        out, cache = self._attend(qkv, start, cache, padding_mask, position_ids, fused, training)
        out = self.output_dense(out) if dense is None else dense(out, "attention_output")
        return out if cache is None else (out, cache)

    def _attend(self, qkv, start, cache, padding_mask, position_ids, fused, training):
        """Everything between the two projections: qkv (batch, seq, (n + 2k) * h) -> out
        (batch, seq, n * h) and the updated cache (or None without one)."""
        batch, seq = ops.shape(qkv)[0], ops.shape(qkv)[1]
        n, h = self.num_heads, self.head_dim
        query, key, value = self.split_heads(qkv, start, position_ids)
        key = ops.transpose(key, (0, 2, 1, 3))  # (batch, kv_heads, seq, head_dim)
        value = ops.transpose(value, (0, 2, 1, 3))
        if cache is not None:
            keys, values = cache
            origin = [0, 0, start, 0]
            keys = backend.update_slice(keys, origin, ops.cast(key, keys.dtype))
            values = backend.update_slice(values, origin, ops.cast(value, values.dtype))
            cache = (keys, values)  # each (batch, kv_heads, max_length, head_dim)
            key, value = ops.cast(keys, self.compute_dtype), ops.cast(values, self.compute_dtype)

        mask = self.attention_mask(seq, ops.shape(key)[2], start, padding_mask)
        if fused:
            # The window rides in the mask the fused kernel already takes (no fallback needed).
            out = ops.dot_product_attention(
                query, ops.transpose(key, (0, 2, 1, 3)), ops.transpose(value, (0, 2, 1, 3)),
                mask=mask[:, None], scale=self.scale,
            )
        else:
            out = self._einsum_attention(query, key, value, mask, training)
        return ops.reshape(out, (batch, seq, n * h)), cache  # (batch, seq, heads * head_dim)

    def attention_mask(self, seq, num_keys, start=0, padding_mask=None):
        """Which keys each query sees: bool (1 or batch, seq, num_keys).

        Causal, within `sliding_window` when set, and off at padding. Query `t` sits at slot
        `start + t`; the window counts slots, not `position_ids`: the real tokens of a padded
        row (left padding in prompts, then generated slots) are contiguous, so slot and
        position distances agree between real tokens, and pads are masked anyway.

        The KV-cached decoder keeps every slot and masks the window here, rather than keeping
        a window-sized ring cache for sliding layers. Measured on one 2-core AMD EPYC, a
        compiled TF decode step of one Gemma 3 270M-shaped layer (4 q / 1 kv heads of 256):
        the window's extra comparison costs nothing measurable (1450 vs 1456 us at 2048 slots,
        541 vs 554 us at 512). A ring of 512 would make a sliding layer's step at 2048 slots
        about 0.55 ms instead of 1.45 ms, but only once the cache outgrows the window, and it
        would give sliding layers a cache layout of their own that prefill, beam reordering,
        left padding and the prepared/int8 decoder would all have to learn: a follow-up for
        long generations, not needed for exactness.

        Example:
        ```python
        from kzoo.layers import CausalSelfAttention
        attn = CausalSelfAttention(hidden_dim=8, num_heads=2, sliding_window=2)
        attn.attention_mask(3, 3)[0]  # [[T, F, F], [T, T, F], [F, T, T]]
        ```
        """
        query_pos = (ops.arange(seq) + start)[:, None]  # (seq, 1)
        key_pos = ops.arange(num_keys)[None, :]  # (1, keys)
        mask = query_pos >= key_pos  # (seq, keys)
        if self.sliding_window is not None:
            mask = ops.logical_and(mask, key_pos > query_pos - self.sliding_window)
        mask = mask[None]  # (1, seq, keys)
        if padding_mask is not None:
            mask = ops.logical_and(mask, ops.cast(padding_mask, "bool")[:, None, :])
        return mask

    def split_heads(self, qkv, start=0, position_ids=None):
        """Fused q/k/v (batch, seq, (n + 2k) * h) -> query (batch, seq, heads, head_dim), key and
        value (batch, seq, kv_heads, head_dim), the q/k norms and then RoPE applied at
        positions `start + arange(seq)` (or `position_ids`). `kzoo.viz` draws attention
        patterns from these.

        Example:
        ```python
        import numpy as np
        from kzoo.layers import CausalSelfAttention
        attn = CausalSelfAttention(hidden_dim=8, num_heads=2, use_rope=True)
        x = np.ones((1, 3, 8), "float32")
        attn.build(x.shape)  # creates query_key_value
        q, k, v = attn.split_heads(attn.query_key_value(x))  # (1, 3, 2, 4) each
        ```
        """
        batch, seq = ops.shape(qkv)[0], ops.shape(qkv)[1]
        n, k, h = self.num_heads, self.num_kv_heads, self.head_dim
        query, key, value = ops.split(qkv, [n * h, (n + k) * h], axis=-1)
        query = ops.reshape(query, (batch, seq, n, h))  # (batch, seq, heads, head_dim)
        key = ops.reshape(key, (batch, seq, k, h))  # (batch, seq, kv_heads, head_dim)
        value = ops.reshape(value, (batch, seq, k, h))
        if self.qk_norm:
            query, key = self.query_norm(query), self.key_norm(key)
        if self.use_rope:
            if position_ids is None:
                position_ids = (ops.arange(seq) + start)[None, :]
            cos, sin = rotary_cos_sin(
                position_ids, h, self.rope_max_wavelength, self.rope_scaling_factor,
                dtype=self.compute_dtype, rope_scaling=self.rope_scaling,
            )
            query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        return query, key, value

    def decode_attention(self, qkv, cache, cache_index, padding_mask=None, position_ids=None):
        """Attention of already projected tokens against the cache, for fast decoders.

        The part of `call` between the two projections, on the cached path, with the einsum
        attention and without dropout. (`call(..., dense=...)` runs the whole layer with other
        projection weights; this stays for callers that project themselves.)

        Args:
            qkv: float tensor. (batch, seq, (num_heads + 2 * num_kv_heads) * head_dim), the
                output of `query_key_value`.
            cache: pair of tensors. `(keys, values)`, each (batch, num_kv_heads, max_length,
                head_dim).
            cache_index: int or scalar int tensor. the cache slot of the first token.
            padding_mask: optional tensor. (batch, max_length) over cache slots.
            position_ids: optional int tensor. (batch, seq) RoPE positions.

        Returns `(out, cache)`: out (batch, seq, num_heads * head_dim), before
        `output_dense`.

        Example:
        ```python
        import numpy as np
        from kzoo.layers import CausalSelfAttention
        attn = CausalSelfAttention(hidden_dim=8, num_heads=2)
        attn.build((1, 1, 8))  # creates query_key_value
        cache = (np.zeros((1, 2, 4, 4), "float32"),) * 2
        x = np.ones((1, 1, 8), "float32")
        out, cache = attn.decode_attention(attn.query_key_value(x), cache, 0)  # (1, 1, 8)
        ```
        """
        return self._attend(qkv, cache_index, tuple(cache), padding_mask, position_ids,
                            fused=False, training=False)

    def _einsum_attention(self, query, key, value, mask, training):
        batch, seq = ops.shape(query)[0], ops.shape(query)[1]
        k, h = self.num_kv_heads, self.head_dim
        groups = self.num_heads // k
        # Query heads grouped under their shared key/value head: no copies of K and V.
        query = ops.reshape(query, (batch, seq, k, groups, h)) * ops.cast(
            self.scale, query.dtype
        )  # (batch, seq, kv_heads, groups, head_dim)
        scores = ops.einsum("btkgh,bksh->bkgts", query, key)  # (batch, kv, groups, seq, keys)
        scores = ops.where(mask[:, None, None], ops.cast(scores, "float32"), _MASK_VALUE)
        probs = ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)
        if training and self.dropout:  # skip the Layer call: eager PyTorch pays it per token
            probs = self.dropout_layer(probs, training=True)
        out = ops.einsum("bkgts,bksh->btkgh", probs, value)  # (batch, seq, kv, groups, head_dim)
        return ops.reshape(out, (batch, seq, self.num_heads, h))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "use_bias": self.use_bias,
            "qkv_bias": self.qkv_bias,
            "output_bias": self.output_bias,
            "head_dim": self.head_dim,
            "dropout": self.dropout,
            "use_rope": self.use_rope,
            "rope_max_wavelength": self.rope_max_wavelength,
            "rope_scaling_factor": self.rope_scaling_factor,
            "rope_scaling": check_rope_scaling(self.rope_scaling),  # a plain dict
            "attention_impl": self.attention_impl,
            "qk_norm": self.qk_norm,
            "qk_norm_epsilon": self.qk_norm_epsilon,
            "norm_scale_offset": self.norm_scale_offset,
            "sliding_window": self.sliding_window,
            "attention_scale": self.attention_scale,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "output_initializer": serialize_optional_initializer(self.output_initializer),
        })
        return config
