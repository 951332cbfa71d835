"""Where speculative decoding's drafts come from, and the checks and static plan around them.

- `lookup_drafts`: prompt lookup, the tokens that followed an earlier occurrence of the
  text's last n-gram (no second model);
- `model_drafts`: k tokens from a draft model with its own KV cache.

`kzoo.generation.speculative` verifies them with the model.

Example:
```python
import numpy as np
from kzoo.generation.drafts import lookup_drafts
text = np.array([[1, 2, 3, 1, 2]], "int32")
lookup_drafts(text, np.array([5], "int32"), k=2, max_ngram=2)  # drafts [[3, 1]], both valid
```
"""

from dataclasses import dataclass

import numpy as np
from keras import ops

from kzoo.generation import loops
from kzoo.generation.inputs import NO_TOKEN
from kzoo.samplers import Sampler

COMBINES = ("drafts combine with greedy and sampling (temperature, top_k, top_p, min_p) "
            "samplers, ragged batches, stop tokens/sequences, log-probs and streaming")


@dataclass(frozen=True)
class Plan:
    """Static shape of one speculative program."""

    k: int  # drafts per iteration
    max_ngram: int  # longest n-gram prompt lookup matches (0 with a draft model)
    holes: int  # dead slots a row may hold (ragged acceptance)
    greedy: bool


def check_draft(model, sampler, draft, num_draft_tokens, max_ngram):
    """Validate the draft options of `Generator`; one-line ValueErrors. Returns the draft model
    (None for prompt lookup)."""
    if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int | np.integer) \
            or num_draft_tokens < 1:
        raise ValueError(f"`num_draft_tokens` must be an integer >= 1. Received: "
                         f"num_draft_tokens={num_draft_tokens!r}")
    if isinstance(max_ngram, bool) or not isinstance(max_ngram, int | np.integer) or max_ngram < 1:
        raise ValueError(f"`max_ngram` must be an integer >= 1. Received: max_ngram={max_ngram!r}")
    if hasattr(sampler, "num_beams"):
        raise ValueError("Beam search does not combine with draft tokens (`draft=`): " + COMBINES
                         + "; use one or the other.")
    if not isinstance(sampler, Sampler):
        raise ValueError(f"Draft tokens need a kzoo sampler (its processed distribution is "
                         f"checked against the draft's); got {type(sampler).__name__}.")
    if sampler.uses_token_counts:
        raise ValueError("Draft tokens do not combine with repetition/frequency/presence "
                         "penalties (they change p within a chunk); turn them off or drop "
                         "`draft=`.")
    if isinstance(draft, str):
        if draft != "prompt_lookup":
            raise ValueError(f"Unknown `draft`: {draft!r}. Valid values: None, 'prompt_lookup' "
                             "or a kzoo CausalLM sharing the vocabulary.")
        return None
    if not callable(getattr(draft, "call_with_cache", None)):
        raise ValueError(f"`draft` must be None, 'prompt_lookup' or a kzoo CausalLM; got "
                         f"{type(draft).__name__}.")
    if draft.vocab_size != model.vocab_size:
        raise ValueError(f"The draft model's vocabulary (vocab_size={draft.vocab_size}) differs "
                         f"from the target model's (vocab_size={model.vocab_size}); a draft "
                         "model must share the tokenizer.")
    return draft


def plan_for(model, draft_model, sampler, batch, k, max_ngram) -> Plan:
    windowed = any(getattr(m, "sliding_window", None) is not None
                   for m in (model, draft_model) if m is not None)
    # Batch 1 never leaves holes; windows count slots, so holes would shrink them.
    holes = 0 if batch.token_ids.shape[0] == 1 or windowed else batch.new_slots
    return Plan(int(k), 0 if draft_model is not None else int(max_ngram), holes,
                bool(sampler.is_greedy))


def zeros_cache(model, batch_size, length):
    """`model.init_cache` without its context limit: slots are not positions here (holes and
    the last chunk's overrun take slots), and positions are clamped to the context."""
    shape = (batch_size, model.num_kv_heads, length, model.head_dim)  # as init_cache's
    return tuple((ops.zeros(shape, model.compute_dtype), ops.zeros(shape, model.compute_dtype))
                 for _ in range(model.num_layers))


def lookup_drafts(text, end, k, max_ngram):
    """Prompt-lookup drafts: after an earlier occurrence of each row's last n tokens (the
    latest of those followed by the most tokens, up to k).

    Args:
        text: int (B, T) prompt (pads `NO_TOKEN`) then the generated tokens, row r's ending
            before `end[r]`.
        end: int (B,) one past each row's last token.
        k: int. drafts per row; max_ngram: int. longest n-gram tried (longer matches win).

    Returns `(drafts (B, k) int32, valid (B, k) bool)`; a valid mask is a prefix (a match near
    the end has fewer than k continuation tokens; no match: none valid).
    """
    text, end = ops.convert_to_tensor(text, "int32"), ops.convert_to_tensor(end, "int32")
    width = ops.shape(text)[1]
    start = ops.full(ops.shape(end), -1, "int32")  # (B,) first draft's index in `text`
    for n in range(1, max_ngram + 1):
        where = end[:, None] - n + ops.arange(n)[None, :]  # (B, n) the suffix's indices
        suffix = ops.take_along_axis(text, ops.clip(where, 0, width - 1), axis=1)
        usable = ops.logical_and(ops.all(suffix != NO_TOKEN, axis=1), end >= n)  # (B,)
        windows = width - n  # candidates t in [0, T - n): text[t:t + n] then text[t + n]
        equal = ops.ones((ops.shape(text)[0], windows), "bool")
        for m in range(n):
            equal = ops.logical_and(equal, text[:, m:m + windows] == suffix[:, m:m + 1])
        t = ops.arange(windows)[None, :]
        # The continuation must start before `end` (that also excludes the suffix itself).
        hit = ops.logical_and(equal, t + n < end[:, None])
        hit = ops.logical_and(hit, usable[:, None])
        # The occurrence with the most continuation tokens (up to k), the latest among those:
        # in a repeating tail the latest occurrence would leave a single token to draft.
        room = ops.minimum(end[:, None] - t - n, k)  # (B, windows)
        best = ops.max(ops.where(hit, room * windows + t, -1), axis=1)  # (B,)
        start = ops.cast(ops.where(best >= 0, best % windows + n, start), "int32")
    index = start[:, None] + ops.arange(k)[None, :]  # (B, k)
    valid = ops.logical_and(start[:, None] >= 0, index < end[:, None])
    drafts = ops.take_along_axis(text, ops.clip(index, 0, width - 1), axis=1)
    return ops.cast(ops.where(valid, drafts, 0), "int32"), valid


def model_drafts(draft, sampler, plan, state, context, seeds):
    """k tokens from the draft model: a chunk [prev, last] at slots [c - 1, c] (the slot before
    may hold a draft accepted last time that the draft model never read), then one at a time.

    Returns `(drafts (B, k), q (B, k, V) or None for greedy, draft cache, seeds)`.
    """
    c, pos, mask = state["c"], state["pos"], state["mask"]
    ids = ops.stack([state["prev"], state["last"]], axis=1)  # (B, 2)
    positions = ops.clip(ops.stack([pos - 1, pos], axis=1), 0, context - 1)
    logits, cache = draft.call_with_cache(ids, state["draft_cache"], c - 1, mask, positions,
                                          own_kernels=True)
    tokens, qs = [], []
    for j in range(plan.k):
        step = logits[:, -1, :]  # (B, V)
        if plan.greedy:
            token = ops.cast(ops.argmax(step, axis=-1), "int32")
        else:
            qs.append(ops.softmax(sampler.process_logits(step), axis=-1))
            token, seeds = loops.draw(sampler, step, None, seeds)
        tokens.append(token)
        if j + 1 < plan.k:
            position = ops.clip(pos + j + 1, 0, context - 1)[:, None]  # (B, 1)
            logits, cache = draft.call_with_cache(token[:, None], cache, c + j + 1, mask,
                                                  position)
    return ops.stack(tokens, axis=1), (ops.stack(qs, axis=1) if qs else None), cache, seeds
