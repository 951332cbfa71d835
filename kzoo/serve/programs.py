"""The compiled programs of `kzoo.serve.engine.Engine`, each traced once per shape it is given.

All of them run the decoder of `kzoo.generation` (`Generator(model).decoder`; no second
implementation of the model) through `kzoo.backend.compile_function`, and the ones that write
the batch's KV cache donate it (on JAX the cache is updated in place instead of copied: at
GPT-2 124M's shape with 16 slots of 256 tokens it is 300 MB, about 15 ms of a 55 ms forward
pass on 2 cores).

- `prefill(P)`: one prompt of at most P tokens (left-padded to P) through the model into a
  fresh P-slot cache, whose slots are written into the batch's cache at [t - P, t) of one row
  (its real tokens end at slot t); the first token is picked. The prompt's projections read the
  layers' own (in, out) kernels when the weights are the live ones (a multi-row product, about
  2x faster on XLA CPU; see `kzoo.generation.decoders`).
- `step(sort, head, width)`: one token for every row at slot t (several rows: the (in, out) kernels
  too), each row sampled with its own settings (`kzoo.serve.sampling.pick`, in the variant
  that `sampling.plan` chose on the host).
- `shift()`: every row's cache slots moved by one amount (a roll of the slot axis).
- `score(W)`: the log-probability of each prompt token (`echo`), without a cache.

Example:
```python
from kzoo.generation import Generator
from kzoo.models import CausalLM
from kzoo.serve.programs import Programs
model = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=64)
programs = Programs(model, Generator(model).decoder)
step = programs.step(sort=False, width=0)  # compiled at its first call
```
"""

from __future__ import annotations

from keras import ops, tree

from kzoo import backend
from kzoo.serve import sampling


class Programs:
    """The engine's compiled programs, made on first use and kept.

    Args:
        model: kzoo `CausalLM`.
        decoder: the `kzoo.generation` decoder (`prepare`, `bind`, `variables`).
        jit_compile: bool. XLA on TensorFlow and JAX.

    Attributes:
        trace_count: int. programs traced so far (a shape seen again reuses its program).
    """

    def __init__(self, model, decoder, jit_compile: bool = True):
        self.model, self.decoder, self.jit_compile = model, decoder, jit_compile
        self.length = int(model.max_sequence_length)
        self.trace_count = 0
        self._programs: dict = {}

    def _compiled(self, kind: str, key: tuple, fn, donate=()):
        if (kind, *key) not in self._programs:
            self._programs[(kind, *key)] = backend.compile_function(
                fn, self.decoder.variables, self.jit_compile, on_trace=self._count_trace,
                donate=donate)
        return self._programs[(kind, *key)]

    def _count_trace(self):
        self.trace_count += 1

    def prepare(self):
        return self._compiled("prepare", (), self.decoder.prepare)

    def shift(self):
        """`(cache, shift) -> cache`: slot j of every row gets old slot j - shift."""
        def program(cache, shift):
            index = ops.mod(ops.arange(self.length) - shift, self.length)
            return tree.map_structure(lambda c: ops.take(c, index, axis=2), cache)  # (B, kv, L, h)
        return self._compiled("shift", (), program, donate=(0,))

    def prefill(self, prompt_slots: int):
        """`(prepared, cache, token_ids (1, P), length (1,), row, t, settings) -> (cache,
        token, logprob, top_ids, top_logprobs)`; needs P <= t."""
        def program(prepared, cache, token_ids, lengths, row, t, settings):
            decoder = self.decoder.bind(prepared)
            start = prompt_slots - lengths  # (1,) the first real slot
            slots = ops.arange(prompt_slots)
            mask = slots[None, :] >= start[:, None]  # (1, P): the padding off
            positions = ops.maximum(slots[None, :] - start[:, None], 0)  # (1, P)
            logits, own = decoder.call_with_cache(
                token_ids, decoder.init_cache(1, prompt_slots), 0, mask, positions,
                own_kernels=True)  # logits (1, 1, V); own: (1, kv, P, h) per layer
            cache = tree.map_structure(
                lambda big, one: backend.update_slice(big, [row, 0, t - prompt_slots, 0], one),
                cache, own)
            return (cache, *sampling.pick(logits[:, -1, :], settings))
        return self._compiled("prefill", (prompt_slots,), program, donate=(1,))

    def step(self, sort: bool, head: bool, width: int):
        """`(prepared, cache, tokens (B,), positions (B,), mask (B, L), t, settings) ->
        (cache, tokens, logprobs, top_ids, top_logprobs)`."""
        def program(prepared, cache, tokens, positions, mask, t, settings):
            decoder = self.decoder.bind(prepared)
            # Several rows read the layers' own (in, out) kernels, as the prefill does: 16 rows
            # of GPT-2 124M, 33.8 ms against 40.3 (one row: 15.9 against 15.5; 2-core AMD
            # EPYC, JAX, medians of 24).
            # PyTorch keeps its captured one-token step (`kzoo.backend.compile_step`).
            rows = ops.shape(tokens)[0]
            own = rows > 1 and backend.name() != "torch"
            logits, cache = decoder.call_with_cache(
                tokens[:, None], cache, t, mask, positions[:, None], last_only=not own,
                own_kernels=own)  # logits (B, 1, V)
            return (cache, *sampling.pick(logits[:, -1, :], settings, sort=sort, head=head,
                                                 width=width))
        return self._compiled("step", (sort, head, width), program, donate=(1,))

    def score(self, width: int):
        """`(token_ids (1, W), targets (1, W)) -> (logprob (1, W), top_ids, top_logprobs)`."""
        def program(token_ids, targets):
            logp = ops.log_softmax(ops.cast(self.model(token_ids), "float32"), axis=-1)
            picked = ops.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (1, W)
            top_logps, top_ids = ops.top_k(logp, k=min(sampling.TOP_N, self.model.vocab_size))
            return picked, ops.cast(top_ids, "int32"), top_logps
        return self._compiled("score", (width,), program)
