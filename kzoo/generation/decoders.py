"""The cached forward pass the decode loops call, behind one small interface.

The loops only need `init_cache(batch, length)` and `call_with_cache(...)`; `ModelDecoder`
adapts a model with kzoo `CausalLM`'s cache API to that, so a model with another cache API
needs only another small decoder class.
"""


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

    def init_cache(self, batch, length):
        return self.model.init_cache(batch, length)

    def call_with_cache(self, token_ids, cache, cache_index, padding_mask, position_ids):
        return self.model.call_with_cache(
            token_ids, cache, cache_index, padding_mask=padding_mask, position_ids=position_ids
        )
