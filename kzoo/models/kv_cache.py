"""Decoding against a key/value cache: `init_cache` and `call_with_cache` of `CausalLM`.

Kept beside the model, as `kzoo.models.mixins` is, to keep each file short: the forward pass
with a cache reuses the model's own `embed`, `blocks`, `final_norm` and `logits`, and the
decode loops of `kzoo.generation` call it once for the prompt (prefill), then once a token.

Example:
```python
import numpy as np
from kzoo.models import CausalLM
model = CausalLM.from_preset("gpt_nano")
cache = model.init_cache(batch_size=1, max_length=8)  # per layer (1, kv_heads, 8, head_dim)
logits, cache = model.call_with_cache(np.array([[5, 6]]), cache, 0)   # (1, 2, vocab_size)
```
"""

from keras import ops

from kzoo.models import _lm_arguments as args_


class KVCacheMixin:
    """`init_cache` and `call_with_cache` for `CausalLM` (see `kzoo.models.kv_cache`)."""

    def init_cache(self, batch_size: int, max_length: int | None = None):
        """An empty key/value cache for `call_with_cache`.

        Args:
            batch_size: int. number of sequences decoded together.
            max_length: int or None. cache slots; default and maximum `max_sequence_length`.

        Returns a tuple with one `(keys, values)` pair per layer, each a zero tensor
        (batch, num_kv_heads, max_length, head_dim).
        """
        max_length = self.max_sequence_length if max_length is None else max_length
        if max_length > self.max_sequence_length:
            raise ValueError(
                f"`max_length`={max_length} exceeds the model's "
                f"max_sequence_length={self.max_sequence_length}."
            )
        shape = (batch_size, self.num_kv_heads, max_length, self.head_dim)
        return tuple(
            (ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype))
            for _ in range(self.num_layers)
        )

    def call_with_cache(self, token_ids, cache, cache_index, padding_mask=None,
                        position_ids=None, training=False, return_hidden_states=False):
        """Run `token_ids` (batch, T) against a key/value cache: prefill, then one at a time.

        Keys and values of `token_ids` are written to cache slots `[cache_index, cache_index +
        T)`; every token attends to the cache's slots before and at its own (sliding layers:
        the last `sliding_window` of them; the cache keeps every slot, see
        `CausalSelfAttention.attention_mask`).

        Args:
            token_ids: int tensor. (batch, T) new tokens.
            cache: tuple of per-layer `(keys, values)` pairs, from `init_cache` or an earlier
                call.
            cache_index: int or scalar int tensor. the slot of `token_ids[:, 0]`.
            padding_mask: optional tensor. (batch, max_length) over cache slots, 1 = real token.
            position_ids: optional int tensor. (batch, T); default `cache_index + arange(T)`.
            training: bool. enables dropout.
            return_hidden_states: bool. also return the final-norm hidden states (batch, T,
                hidden_dim) the logits are read from (contrastive search compares them).

        Returns `(logits, cache)`: float32 logits (batch, T, vocab_size) and the updated cache;
        `(logits, cache, hidden_states)` with `return_hidden_states=True`.

        Example:
        ```python
        import numpy as np
        from kzoo.models import CausalLM
        model = CausalLM.from_preset("gpt_nano")
        cache = model.init_cache(batch_size=1, max_length=16)
        logits, cache = model.call_with_cache(np.array([[5, 6, 7]]), cache, 0)   # prefill
        logits, cache = model.call_with_cache(np.array([[8]]), cache, 3)         # next token
        ```
        """
        if len(cache) != self.num_layers:
            raise ValueError(
                f"`cache` holds {len(cache)} layers; this model has {self.num_layers}. "
                "Make it with `model.init_cache`."
            )
        args_.check_token_ids(self, token_ids, limit=cache[0][0].shape[2])
        x = self.embed(token_ids, position_ids, cache_index, training)
        caches = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(
                x, padding_mask=padding_mask, position_ids=position_ids,
                cache=tuple(layer_cache), cache_index=cache_index, training=training,
            )
            caches.append(layer_cache)
        hidden = self.final_norm(x)
        if return_hidden_states:
            return self.logits(hidden), tuple(caches), hidden
        return self.logits(hidden), tuple(caches)
