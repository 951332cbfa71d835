"""The cached forward pass the decode loops call, behind one small interface.

A compiled program first calls `prepared = decoder.prepare()` (tensors computed once per
call, e.g. weights in another layout), then uses `decoder.bind(prepared)`, which has
`init_cache(batch, length)` and `call_with_cache(...)` returning `(logits (B, T or 1, V),
cache)`; the loops read only the last position's logits. With `return_hidden=True` it returns
`(logits, cache, hidden (B, T, hidden_dim))`, the final-norm hidden states of every position
(contrastive search compares them).

- `ModelDecoder`: the model's own `call_with_cache` (the reference path).
- `PreparedDecoder`: the model's own blocks (`TransformerBlock.call` with its `dense` hook),
  every projection read from (out, in) matrices (`kzoo.generation.quantization`): transposed
  from the live variables at the start of each program, or a float32 / bfloat16 / int8
  snapshot. It computes the head only for the last position.
"""

from keras import ops

from kzoo import backend
from kzoo.generation import quantization as q


class ModelDecoder:
    """Decode through `model.init_cache` / `model.call_with_cache`."""

    def __init__(self, model):
        for method in ("init_cache", "call_with_cache"):
            if not callable(getattr(model, method, None)):
                raise ValueError(
                    f"Generation needs a model with `{method}` (a kzoo CausalLM); got "
                    f"{type(model).__name__}."
                )
        self.model = model

    def variables(self) -> list:
        """The Keras variables the decode programs read."""
        return list(self.model.variables)

    def prepare(self):
        return ()

    def bind(self, prepared):
        return self

    def init_cache(self, batch, length):
        return self.model.init_cache(batch, length)

    def call_with_cache(self, token_ids, cache, cache_index, padding_mask, position_ids,
                        last_only=True, own_kernels=False, return_hidden=False):
        # The model computes every position's logits anyway; callers of the last one slice it.
        del last_only, own_kernels
        extra = {"return_hidden_states": True} if return_hidden else {}
        return self.model.call_with_cache(
            token_ids, cache, cache_index, padding_mask=padding_mask, position_ids=position_ids,
            **extra,
        )


def supports_prepared(model) -> bool:
    """Whether `PreparedDecoder` can run `model`: a kzoo CausalLM with float kernels."""
    needed = ("blocks", "token_embedding", "final_norm", "embed")
    return all(hasattr(model, a) for a in needed) and not q.is_keras_quantized(model)


class PreparedDecoder(ModelDecoder):
    """Decode a kzoo `CausalLM` with its projections in the (out, in) decode layout.

    Args:
        model: kzoo `CausalLM`.
        weights: `GenerationWeights` or None. None: transpose the live float weights inside
            every compiled program (always current, no extra memory between calls).
        compile_steps: bool. run one-token steps through `kzoo.backend.compile_step` (on
            PyTorch, whose decode loops run eagerly, a graph traced once per shape; elsewhere
            the loop around the step is compiled already). False: the step's Python every time.

    Example:
    ```python
    import numpy as np
    from kzoo.generation.decoders import PreparedDecoder
    from kzoo.models import CausalLM
    decoder = PreparedDecoder(CausalLM.from_preset("gpt_nano"))
    bound = decoder.bind(decoder.prepare())
    cache = bound.init_cache(1, 8)
    logits, cache = bound.call_with_cache(np.array([[5, 6]]), cache, 0, None, None)  # (1, 1, V)
    ```
    """

    def __init__(self, model, weights=None, compile_steps=True):
        super().__init__(model)
        if not supports_prepared(model):
            raise ValueError(
                f"PreparedDecoder needs a kzoo CausalLM with float kernels; got "
                f"{type(model).__name__}. Use ModelDecoder (weights='reference')."
            )
        if weights is not None:
            q.check_matches(weights, model)
        self.weights = weights
        self.step = backend.compile_step(self._step, self.variables) if compile_steps else None

    def variables(self) -> list:
        """The model's variables and a weights snapshot's."""
        return super().variables() + (self.weights.variables if self.weights else [])

    def _step(self, entries, token_ids, cache, cache_index, padding_mask, position_ids):
        # A snapshot's entries are variables the step reads (None is passed for them).
        bound = _Bound(self.model, self.weights.entries if entries is None else entries)
        return bound.call_with_cache(token_ids, cache, cache_index, padding_mask, position_ids)

    def prepare(self):
        if self.weights is not None:
            return ()  # the snapshot's variables are read where they are used
        prepared = {}
        for name, (kernel, bias) in q.projections(self.model).items():
            if kernel is None:  # tied head: the embedding (vocab, hidden) is (out, in)
                entry = {"kernel": ops.convert_to_tensor(self.model.token_embedding.embeddings)}
            else:
                entry = {"kernel": ops.transpose(kernel)}  # (in, out) -> (out, in)
            if bias is not None:
                entry["bias"] = ops.convert_to_tensor(bias)
            prepared[name] = entry
        return prepared

    def bind(self, prepared):
        if self.weights is None:
            return _Bound(self.model, prepared, self.step, prepared)
        return _Bound(self.model, self.weights.entries, self.step, None)


def prepared_logits(model, token_ids, weights=None):
    """Logits (batch, seq, V) of every position through `PreparedDecoder` (for perplexity).

    Args:
        model: kzoo `CausalLM`.
        token_ids: int array. (batch, seq), no padding.
        weights: `GenerationWeights` or None (the live float weights).

    Example:
    ```python
    import numpy as np
    from kzoo.generation.decoders import prepared_logits
    from kzoo.models import CausalLM
    prepared_logits(CausalLM.from_preset("gpt_nano"), np.array([[1, 2, 3]]))  # (1, 3, V)
    ```
    """
    decoder = PreparedDecoder(model, weights)
    bound = decoder.bind(decoder.prepare())
    batch, seq = token_ids.shape
    cache = bound.init_cache(batch, seq)
    logits, _ = bound.call_with_cache(token_ids, cache, 0, None, None, last_only=False)
    return logits


class _Bound:
    """`init_cache` / `call_with_cache` over one set of (out, in) projection entries; one-token
    steps go through `step(step_entries, ...)` when there is one."""

    def __init__(self, model, entries, step=None, step_entries=None):
        self.model = model
        self.entries = entries
        self.step = step
        self.step_entries = step_entries

    def init_cache(self, batch, length):
        return self.model.init_cache(batch, length)

    def _dense(self, x, name):
        return q.project(x, self.entries[name])  # (batch, seq, in) -> (batch, seq, out)

    def _block_dense(self, i):
        """The `dense` hook of block `i`: its projections ("qkv", ...) from the entries."""
        return lambda x, name: self._dense(x, f"block_{i}/{name}")

    def call_with_cache(self, token_ids, cache, cache_index, padding_mask, position_ids,
                        last_only=True, own_kernels=False, return_hidden=False):
        """`return_hidden`: also return every position's final-norm hidden states (B, T, H).

        `own_kernels`: a chunk of a few tokens (speculative verification) reads the blocks'
        projections from the layers' own (in, out) kernels when the weights are the live ones.
        XLA on CPU multiplies a few rows by an (in, out) matrix about 2x faster than by the
        (out, in) one that suits a single row (a 2-core AMD EPYC, TF XLA, gpt_mini widths:
        5 x 384 by 384 x 1536, 60 us against 141 us; one row: 31 us (out, in), 42 us)."""
        if (self.step is not None and last_only and not return_hidden
                and ops.shape(token_ids)[1] == 1):
            return self.step(self.step_entries, token_ids, tuple(cache),
                             ops.convert_to_tensor(cache_index, "int32"), padding_mask,
                             position_ids)
        model = self.model
        x = model.embed(token_ids, position_ids, cache_index)  # (batch, T, hidden)
        caches = []
        for i, (block, layer_cache) in enumerate(zip(model.blocks, cache)):
            # The block's own code; einsum attention, which groups query heads under their
            # key/value head and reads the cache without copying it (one query row per step).
            x, layer_cache = block(
                x, padding_mask=padding_mask, position_ids=position_ids,
                cache=tuple(layer_cache), cache_index=cache_index, training=False,
                dense=None if own_kernels and self.step_entries is not None
                else self._block_dense(i), attention_impl="einsum",
            )
            caches.append(layer_cache)
        if return_hidden:
            hidden = model.final_norm(x)  # (batch, T, hidden)
            x = hidden[:, -1:, :] if last_only else hidden
            return ops.cast(self._dense(x, "head"), "float32"), tuple(caches), hidden
        # The loops read only the last position: the head runs on it alone, (batch, 1, V).
        x = model.final_norm(x[:, -1:, :] if last_only else x)
        return ops.cast(self._dense(x, "head"), "float32"), tuple(caches)
