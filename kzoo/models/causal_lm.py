"""`CausalLM`: a decoder-only language model assembled from kzoo layers.

What it offers beyond building and its forward pass comes from mixins kept beside it:
decoding with a key/value cache (`kzoo.models.kv_cache`), LoRA (`kzoo.models.lora`), and
interop and generation (`kzoo.models.mixins`).
"""

import math

import keras
from keras import ops

from kzoo.layers import PositionEmbedding, TokenEmbedding, TransformerBlock, get_norm
from kzoo.layers._checks import fraction, one_of, positive_int
from kzoo.layers.rotary import check_rope_scaling
from kzoo.models import _lm_arguments as args_
from kzoo.models._token_checks import check_vocabulary
from kzoo.models.kv_cache import KVCacheMixin
from kzoo.models.lora import LoRAMixin
from kzoo.models.mixins import GenerationMixin, InteropMixin
from kzoo.models.presets import get_preset

POSITION_EMBEDDINGS = ("learned", "rope")


@keras.saving.register_keras_serializable(package="kzoo")
class CausalLM(LoRAMixin, InteropMixin, GenerationMixin, KVCacheMixin, keras.Model):
    """A causal language model: token ids in, next-token logits out.

    Built from flat arguments, so a configuration is a plain dict (see `from_preset`). The GPT
    family uses learned positions, LayerNorm, GELU and tied embeddings; the Llama family RoPE,
    RMSNorm, SwiGLU, grouped-query attention and an untied output head; Qwen3 adds `qk_norm`,
    Gemma 3 also `norm_scale_offset`, `embedding_scale`, `post_norms`, sliding-window layers
    (`sliding_window`, `layer_types`, `local_rope_max_wavelength`) and `attention_scale`.

    Call: `model(token_ids)` or `model({"token_ids": ..., "padding_mask": ..., "position_ids":
    ...})` with int (batch, seq) tensors; returns float32 logits (batch, seq, vocab_size).
    Position `t`'s logits predict token `t + 1`.

    Args:
        vocab_size: int. number of token ids.
        num_layers: int. transformer blocks.
        num_heads: int. attention query heads.
        hidden_dim: int. model width; divisible by `num_heads`.
        intermediate_dim: int or None. feed-forward width; default 4x (plain) or ~8/3x (gated).
        num_kv_heads: int or None. key/value heads for grouped-query attention.
        max_sequence_length: int. longest input the model accepts (its context window).
        position_embedding: str. "learned" (GPT-2) or "rope" (Llama).
        norm: str. "layernorm" or "rmsnorm".
        activation: str. feed-forward activation, e.g. "gelu" or "swiglu".
        tie_embeddings: bool. use the token embedding's transpose as the output head.
        use_bias: bool. biases in projections and norms (the default of the three below).
        qkv_bias: bool or None. biases of the query/key/value projections (Qwen2: True while
            the rest have none); None: `use_bias`.
        attention_output_bias: bool or None. bias of the attention output; None: `use_bias`.
        feedforward_bias: bool or None. biases of the feed-forward; None: `use_bias`.
        head_dim: int or None. size of each attention head; None: `hidden_dim // num_heads`.
        rope_scaling: dict or None. RoPE frequency scaling, e.g. Llama 3.1's
            `{"type": "llama3", ...}` (see `kzoo.layers.rotary.check_rope_scaling`).
        dropout: float. dropout rate in [0, 1).
        norm_epsilon: float. epsilon of every norm.
        rope_max_wavelength: float. RoPE base.
        rope_scaling_factor: float. RoPE linear position interpolation.
        initializer_range: float. stddev of the normal initializers; projections into the
            residual stream use `initializer_range / sqrt(2 * num_layers)` (GPT-2).
        attention_impl: str. "auto", "einsum" or "fused" (see `CausalSelfAttention`).
        remat: bool. recompute each block's forward pass in the backward pass (activation
            checkpointing) when training: less memory, one more forward. Needs dropout 0.
        qk_norm: bool. per-head RMSNorm (`norm_epsilon`) on queries and keys after the
            projection, before RoPE (Qwen3, Gemma 3); needs norm="rmsnorm".
        norm_scale_offset: float. every RMSNorm multiplies by `norm_scale_offset + scale`
            (Gemma: 1.0, its `(1 + w)` weights; the scales then start at zero).
        embedding_scale: float or None. token embeddings times this (cast to the compute
            dtype) before the first block (Gemma: sqrt(hidden_dim)); the tied head is unscaled.
        post_norms: bool. Gemma 2/3's norm on each branch's output before its residual add.
        sliding_window: int or None. a sliding layer's query at t sees keys t - window + 1 .. t.
        layer_types: list of str or None. per layer "full_attention" or "sliding_attention";
            None: every layer slides when `sliding_window` is set. Without `sliding_window`
            every layer attends to all keys (the type still picks the RoPE).
        local_rope_max_wavelength: float or None. RoPE base of the sliding layers, which then
            use no rope scaling (Gemma 3: 10 000); None: the global RoPE settings everywhere.
        attention_scale: float or None. factor on q.k; None: head_dim ** -0.5 (Gemma 3:
            query_pre_attn_scalar ** -0.5).
        **kwargs: passed on to `keras.Model` (`name`, `dtype` such as "mixed_bfloat16").

    Example:
    ```python
    import numpy as np
    from kzoo.models import CausalLM
    model = CausalLM.from_preset("gpt_nano", vocab_size=100)
    logits = model(np.array([[1, 2, 3]]))  # (1, 3, 100)
    ```
    """

    def __init__(self, vocab_size: int, num_layers: int, num_heads: int, hidden_dim: int,
                 intermediate_dim: int | None = None, num_kv_heads: int | None = None,
                 max_sequence_length: int = 1024, position_embedding: str = "learned",
                 norm: str = "layernorm", activation: str = "gelu", tie_embeddings: bool = True,
                 use_bias: bool = True, dropout: float = 0.0, norm_epsilon: float = 1e-5,
                 rope_max_wavelength: float = 10000.0, rope_scaling_factor: float = 1.0,
                 initializer_range: float = 0.02, attention_impl: str = "auto",
                 qkv_bias: bool | None = None, attention_output_bias: bool | None = None,
                 feedforward_bias: bool | None = None, head_dim: int | None = None,
                 rope_scaling: dict | None = None, remat: bool = False, qk_norm: bool = False,
                 norm_scale_offset: float = 0.0, embedding_scale: float | None = None,
                 post_norms: bool = False, sliding_window: int | None = None,
                 layer_types: list[str] | None = None,
                 local_rope_max_wavelength: float | None = None,
                 attention_scale: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int("vocab_size", vocab_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.num_heads = positive_int("num_heads", num_heads)
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        if intermediate_dim is None:
            intermediate_dim = args_.default_intermediate_dim(hidden_dim, activation)
        self.intermediate_dim = positive_int("intermediate_dim", intermediate_dim)
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.max_sequence_length = positive_int("max_sequence_length", max_sequence_length)
        one_of("position_embedding", position_embedding, POSITION_EMBEDDINGS)
        self.position_embedding = position_embedding
        self.norm = norm
        self.activation = activation
        self.tie_embeddings = tie_embeddings
        self.use_bias = use_bias
        self.dropout = fraction("dropout", dropout)
        self.norm_epsilon = norm_epsilon
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.initializer_range = initializer_range
        self.attention_impl = attention_impl
        self.remat = remat
        self.rope_scaling = check_rope_scaling(rope_scaling)
        (self.norm_scale_offset, self.embedding_scale, self.local_rope_max_wavelength,
         self.attention_scale) = args_.check_options(
            norm_scale_offset, embedding_scale, local_rope_max_wavelength, attention_scale,
            qk_norm, post_norms)
        self.qk_norm, self.post_norms = qk_norm, post_norms
        self.layer_types = args_.check_layer_types(layer_types, num_layers, sliding_window)
        self.sliding_window = sliding_window
        self.layer_kinds = args_.layer_kinds(self.layer_types, num_layers, sliding_window)

        init = keras.initializers.RandomNormal(stddev=initializer_range)
        residual_init = keras.initializers.RandomNormal(
            stddev=initializer_range / math.sqrt(2 * num_layers)
        )
        if initializer_range == 0:
            # A zero stddev draws zeros: skip the draws (a second of a 124M model's build),
            # which `from_hf` uses before it overwrites every weight.
            init = residual_init = keras.initializers.Zeros()
        policy = self.dtype_policy
        self.token_embedding = TokenEmbedding(
            vocab_size, hidden_dim, tie_weights=tie_embeddings, embeddings_initializer=init,
            dtype=policy, name="token_embedding",
        )
        self.position_embedding_layer = None
        if position_embedding == "learned":
            self.position_embedding_layer = PositionEmbedding(
                max_sequence_length, hidden_dim, embeddings_initializer=init, dtype=policy,
                name="position_embedding",
            )
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=policy)
        self.blocks = [
            TransformerBlock(
                hidden_dim, num_heads, self.intermediate_dim, num_kv_heads=self.num_kv_heads,
                activation=activation, norm=norm, norm_epsilon=norm_epsilon, use_bias=use_bias,
                dropout=dropout, use_rope=position_embedding == "rope",
                attention_impl=attention_impl, kernel_initializer=init,
                output_initializer=residual_init, dtype=policy, qkv_bias=qkv_bias,
                attention_output_bias=attention_output_bias, feedforward_bias=feedforward_bias,
                head_dim=head_dim, qk_norm=qk_norm, norm_scale_offset=self.norm_scale_offset,
                post_norms=post_norms, attention_scale=self.attention_scale,
                name=f"block_{i}", **args_.block_settings(self, i),
            )
            for i in range(num_layers)
        ]
        self.final_norm = get_norm(
            norm, norm_epsilon, use_bias, self.norm_scale_offset, dtype=policy, name="final_norm"
        )
        first = self.blocks[0]
        self.qkv_bias = first.attention.qkv_bias
        self.attention_output_bias = first.attention.output_bias
        self.feedforward_bias = first.feedforward_bias
        self.head_dim = first.attention.head_dim
        # All shapes are known from the arguments: create the weights now, as keras-hub does,
        # so a fresh model can be counted, copied into and loaded without a dummy call.
        self.build((None, None))

    # ----------------------------------------------------------------------------- building
    def build(self, input_shape=None):
        if self.built:
            return
        shape = (None, None, self.hidden_dim)
        self.token_embedding.build()
        if self.position_embedding_layer is not None:
            self.position_embedding_layer.build()
        for block in self.blocks:
            block.build(shape)
        self.final_norm.build(shape)
        self.built = True

    def build_from_config(self, config):
        # Weights already exist (built in __init__); nothing to do on load.
        return

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "CausalLM":
        """Build the model recipe called `name`, with any constructor argument overridden.

        Args:
            name: str. one of `kzoo.models.list_presets()`.
            **overrides: constructor arguments replacing the preset's, e.g. `vocab_size=65`.

        Example:
        ```python
        from kzoo.models import CausalLM
        model = CausalLM.from_preset("llama_nano", vocab_size=65, max_sequence_length=64)
        ```
        """
        return cls(**args_.preset_arguments(cls, get_preset(name), name, overrides))

    # ----------------------------------------------------------------------------- calling
    def embed(self, token_ids, position_ids=None, cache_index=0, training=False):
        """The residual stream entering the first block: token embeddings (times
        `embedding_scale` when set), plus learned position embeddings for the GPT family (RoPE
        models add positions inside attention).

        The ids are not checked here (`model(...)` and `call_with_cache` check them), so a
        compiled decode step can call it without reading values.

        Args:
            token_ids: int tensor. (batch, seq).
            position_ids: optional int tensor. (batch, seq); default `cache_index + arange(seq)`.
            cache_index: int or scalar int tensor. the position of `token_ids[:, 0]`.
            training: bool. enables the embedding dropout.

        Returns float tensor (batch, seq, hidden_dim) in the compute dtype.

        Example:
        ```python
        import numpy as np
        from kzoo.models import CausalLM
        x = CausalLM.from_preset("gpt_nano").embed(np.array([[1, 2, 3]]))  # (1, 3, 64)
        ```
        """
        x = self.token_embedding(token_ids)  # (batch, seq, hidden)
        if self.embedding_scale is not None:
            # In the compute dtype, as transformers' Gemma casts sqrt(hidden) to the weights'.
            x = x * ops.cast(self.embedding_scale, x.dtype)
        if self.position_embedding_layer is not None:
            if position_ids is None:
                position_ids = (ops.arange(ops.shape(token_ids)[1]) + cache_index)[None, :]
            x = x + self.position_embedding_layer(position_ids)
        # Dropout is the identity unless training: skipping its Layer call saves eager
        # backends (PyTorch) that bookkeeping on every decoded token.
        return self.embedding_dropout(x, training=True) if training else x

    def hidden_states(self, inputs, training=None):
        """Final-norm hidden states (batch, seq, hidden_dim), before the output head.

        Heads of other kinds (a reward model's scalar head) sit on these.

        Example:
        ```python
        import numpy as np
        from kzoo.models import CausalLM
        h = CausalLM.from_preset("gpt_nano").hidden_states(np.array([[1, 2]]))  # (1, 2, 64)
        ```
        """
        token_ids, padding_mask, position_ids = args_.unpack_inputs(inputs)
        args_.check_token_ids(self, token_ids)
        x = self.embed(token_ids, position_ids, 0, training)
        # Blocks read `position_ids` for RoPE only; learned positions were added by `embed`.
        for block in self.blocks:
            def run(h, block=block):
                return block(h, padding_mask=padding_mask, position_ids=position_ids,
                             training=training)
            # Remat keeps only each block's input for the backward pass, recomputing the rest.
            x = keras.remat(run)(x) if self.remat and training else run(x)
        return self.final_norm(x)

    def logits(self, hidden_states):
        """Vocabulary logits, float32 (batch, seq, vocab_size), from `hidden_states(...)`."""
        return ops.cast(self.token_embedding(hidden_states, reverse=True), "float32")

    def __call__(self, inputs, *args, **kwargs):
        # Checked here too, before Keras wraps errors of `call` in a multi-line report.
        if isinstance(inputs, dict) and "token_ids" in inputs:
            check_vocabulary(self.vocab_size, inputs["token_ids"])
        elif not isinstance(inputs, dict):
            check_vocabulary(self.vocab_size, inputs)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=None):
        return self.logits(self.hidden_states(inputs, training=training))

    @property
    def remat(self) -> bool:
        """Activation checkpointing of the blocks when training; settable before compile."""
        return self._remat

    @remat.setter
    def remat(self, value: bool):
        if value and self.dropout:
            # The recomputation would draw new dropout masks: gradients of another forward.
            raise ValueError(f"`remat=True` needs dropout=0.0 (the backward pass reruns each "
                             f"block with fresh dropout masks). Received: dropout={self.dropout}")
        self._remat = bool(value)

    # ----------------------------------------------------------------------------- training
    def compile(self, optimizer="adamw", loss=None, **kwargs):
        """`keras.Model.compile` with next-token cross-entropy on logits as the default loss."""
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def compile_from_config(self, config):
        # Keras skips restoring compile() for models that override it; ours only adds a default.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        if self.dtype_policy.name != keras.config.dtype_policy().name:
            config["dtype"] = keras.dtype_policies.serialize(self.dtype_policy)
        config.update({key: getattr(self, key) for key in args_.CONFIG_KEYS})
        config["rope_scaling"] = check_rope_scaling(self.rope_scaling)  # not a TrackedDict
        if self.layer_types is not None:
            config["layer_types"] = list(self.layer_types)  # not a TrackedList
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "dtype" in config and isinstance(config["dtype"], dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
