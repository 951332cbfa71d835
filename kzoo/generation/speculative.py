"""Speculative decoding: draft k tokens cheaply, check them in one cached forward of k + 1.

Two sources of drafts, one verifier (the target model's own cached call on a chunk of k + 1
tokens, as prefill runs it):
- prompt lookup: the k tokens that followed the latest earlier occurrence of the text's last
  n-gram (n = `max_ngram` down to 1) in the prompt or the text generated so far;
- a draft model: any kzoo `CausalLM` with the same vocabulary, decoding k tokens with its own
  KV cache (same slots and padding mask as the target's).

Greedy keeps the longest prefix of drafts equal to the target's argmax, then the target's own
next token, so the tokens are those of plain greedy decoding. Sampling uses the standard rule
(Leviathan et al. 2023, Chen et al. 2023): draft x ~ q is kept with probability
min(1, p(x) / q(x)); at the first rejection the token is drawn from max(0, p - q) normalised;
after k acceptances one more from p. p and q are the sampler's processed distributions
(temperature, top-k, top-p, min-p); a prompt-lookup draft is a point mass (q = 1 on it).

Ragged batches in lockstep slots: each iteration writes the chunk at one slot index c for
every row, and rows accept different counts. A row that accepts fewer than the batch advance
leaves "holes": cache slots switched off in its padding mask, exactly like left padding, so
attention never sees them (positions stay per-row and contiguous). The advance is capped so no
row holds more than `holes` dead slots, which keeps the cache at P + N + k + holes slots; at
batch 1 there are never holes. Sliding-window models get no holes (their window counts slots).

Example:
```python
from kzoo.generation import Generator
from kzoo.models import CausalLM
model = CausalLM.from_preset("gpt_nano", vocab_size=64)
generator = Generator(model, "greedy", draft="prompt_lookup", num_draft_tokens=4)
result = generator.generate([[5, 6, 7, 5, 6]], max_new_tokens=8)
result.stats["acceptance_rate"]
```
"""

import keras
import numpy as np
from keras import ops

from kzoo.generation import loops
from kzoo.generation.drafts import (
    lookup_drafts,
    model_drafts,
    plan_for,
    zeros_cache,
)
from kzoo.generation.inputs import NO_TOKEN
from kzoo.samplers import functional as F
from kzoo.samplers.sampler import with_seeds


def _prefill(decoder, token_ids, lengths, length):
    """`loops.prefill` into a cache of `length` slots; returns `(last logits, cache, mask)`."""
    prompt_slots = ops.shape(token_ids)[1]
    start = prompt_slots - lengths  # (B,)
    mask = ops.arange(length)[None, :] >= start[:, None]  # (B, L): pads off, the rest on
    positions = ops.maximum(ops.arange(prompt_slots)[None, :] - start[:, None], 0)  # (B, P)
    cache = zeros_cache(decoder.model, ops.shape(token_ids)[0], length)
    logits, cache = decoder.call_with_cache(token_ids, cache, 0, mask, positions)
    return logits[:, -1, :], cache, mask


def _leading(ok):
    """How many leading entries of each row of bool (B, k) are true: int32 (B,)."""
    return ops.sum(ops.cumprod(ops.cast(ok, "int32"), axis=1), axis=1)


def _emit(state, token, logp, on, limit, table):
    """Append `token` (B,) to rows where `on`: text, log-prob, count, stop check, done."""
    prompt_slots = state["prompt_slots"]
    text, num = state["text"], state["num"]
    on = ops.logical_and(on, ops.logical_not(state["done"]))
    column = ops.arange(ops.shape(text)[1])[None, :] == (prompt_slots + num)[:, None]
    text = ops.where(ops.logical_and(column, on[:, None]), token[:, None], text)
    logprobs = state["logprobs"]
    at = ops.arange(ops.shape(logprobs)[1])[None, :] == num[:, None]
    logprobs = ops.where(ops.logical_and(at, on[:, None]), logp[:, None], logprobs)
    num = num + ops.cast(on, "int32")
    width = ops.shape(table)[1]
    where = prompt_slots + num[:, None] - width + ops.arange(width)[None, :]  # (B, M)
    window = ops.take_along_axis(text, ops.maximum(where, 0), axis=1)
    window = ops.where(where >= prompt_slots, window, NO_TOKEN)  # new tokens only
    hit, hit_length = loops.stop_match(window, table)
    hit = ops.logical_and(hit, on)
    done = ops.logical_or(ops.logical_or(state["done"], hit), num >= limit)
    stop_lengths = ops.where(hit, hit_length, state["stop_lengths"])
    return {**state, "text": text, "logprobs": logprobs, "num": num, "done": done,
            "stop_lengths": stop_lengths}


def start(target, draft, sampler, plan, token_ids, lengths, limit, table, new_slots, seeds):
    """Prefill both models and draw the first token from the target: the loop's state (a dict
    of tensors; `prompt_slots` is a Python int)."""
    batch, prompt_slots = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
    length = prompt_slots + new_slots + plan.k + plan.holes
    logits, cache, mask = _prefill(target, token_ids, lengths, length)
    draft_cache = (_prefill(draft, token_ids, lengths, length)[1] if draft is not None
                   else ops.zeros((1,)))
    first, seeds = loops.draw(sampler, logits, None, seeds)
    logp = ops.take_along_axis(ops.log_softmax(logits, axis=-1), first[:, None], axis=-1)[:, 0]
    real = ops.arange(prompt_slots)[None, :] >= (prompt_slots - lengths)[:, None]
    text = ops.concatenate([ops.where(real, token_ids, NO_TOKEN),
                            ops.full((batch, new_slots), NO_TOKEN, "int32")], axis=1)
    zeros = ops.zeros((batch,), "int32")
    state = {
        "prompt_slots": prompt_slots, "c": ops.convert_to_tensor(prompt_slots, "int32"),
        "last": first, "prev": ops.cast(token_ids[:, -1], "int32"), "pos": lengths,
        "cache": cache, "draft_cache": draft_cache, "mask": mask, "text": ops.cast(text, "int32"),
        "logprobs": ops.zeros((batch, new_slots), "float32"), "num": zeros,
        "done": ops.zeros((batch,), "bool"), "stop_lengths": zeros, "holes": zeros,
        "drafted": zeros, "accepted": zeros, "steps": ops.convert_to_tensor(1, "int32"),
        "seeds": tuple(seeds),
    }
    return _emit(state, first, logp, ops.ones((batch,), "bool"), limit, table)


def _uniform(sampler, shape, seeds):
    return with_seeds(sampler, seeds, lambda: keras.random.uniform(
        shape, seed=sampler.seed_generator))


def _draw_from(sampler, probs, seeds):
    """One id per row of unnormalised probabilities (B, V)."""
    logits = ops.where(probs > 0, ops.log(ops.maximum(probs, 1e-38)), F.NEG_INF)
    return with_seeds(sampler, seeds, lambda: F.categorical_draw(logits, sampler.seed_generator))


def advance(target, draft, sampler, plan, state, limit, table, context, draft_context):
    """One iteration: draft k tokens, verify them in one forward of k + 1, emit 1 to k + 1."""
    k, seeds = plan.k, state["seeds"]
    active = ops.logical_not(state["done"])
    c, pos, last = state["c"], state["pos"], state["last"]
    if draft is None:
        drafts, valid = lookup_drafts(state["text"], state["prompt_slots"] + state["num"], k,
                                      plan.max_ngram)
        q, draft_cache = None, state["draft_cache"]
    else:
        drafts, q, draft_cache, seeds = model_drafts(draft, sampler, plan, state, draft_context,
                                                     seeds)
        valid = ops.ones(ops.shape(drafts), "bool")
    chunk = ops.concatenate([last[:, None], drafts], axis=1)  # (B, k + 1)
    positions = ops.clip(pos[:, None] + ops.arange(k + 1)[None, :], 0, context - 1)
    logits, cache = target.call_with_cache(chunk, state["cache"], c, state["mask"], positions,
                                           last_only=False, own_kernels=True)  # (B, k + 1, V)
    batch, vocab = ops.shape(logits)[0], ops.shape(logits)[2]
    if plan.greedy:
        best = ops.cast(ops.argmax(logits, axis=-1), "int32")  # (B, k + 1)
        proposed = _leading(ops.logical_and(drafts == best[:, :k], valid))
    else:
        flat = ops.reshape(logits, (batch * (k + 1), vocab))  # (B * (k + 1), V)
        p = ops.reshape(ops.softmax(sampler.process_logits(flat), axis=-1), (batch, k + 1, vocab))
        q = (ops.one_hot(drafts, vocab, dtype="float32") if q is None else q)  # (B, k, V)
        q = q * ops.cast(valid, "float32")[..., None]  # no draft: q = 0, so p is used
        p_draft = ops.take_along_axis(p[:, :k], drafts[..., None], axis=-1)[..., 0]  # (B, k)
        q_draft = ops.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]
        u, seeds = _uniform(sampler, (batch, k), seeds)
        proposed = _leading(ops.logical_and(u * q_draft < p_draft, valid))
    # Ragged rows: the batch advances by the most any row accepted, capped so no row holds
    # more than `plan.holes` dead slots; a row above the advance keeps only that many.
    cap = ops.where(active, proposed + plan.holes - state["holes"], 2 ** 30)
    step = ops.minimum(ops.max(ops.where(active, proposed, 0)), ops.min(cap))  # scalar
    accepted = ops.minimum(proposed, step)  # (B,)
    if plan.greedy:
        correction = ops.take_along_axis(best, accepted[:, None], axis=1)[:, 0]
    else:
        residual = ops.concatenate([ops.maximum(p[:, :k] - q, 0.0), p[:, k:]], axis=1)
        residual = ops.take_along_axis(residual, proposed[:, None, None], axis=1)[:, 0]
        empty = ops.sum(residual, axis=-1, keepdims=True) <= 0  # p == q: rounding only
        p_at = ops.take_along_axis(p, proposed[:, None, None], axis=1)[:, 0]
        drawn, seeds = _draw_from(sampler, ops.where(empty, p_at, residual), seeds)
        kept = ops.take_along_axis(chunk, ops.minimum(accepted + 1, k)[:, None], axis=1)[:, 0]
        correction = ops.where(accepted < proposed, kept, drawn)  # cut short: an accepted draft
    log_softmax = ops.log_softmax(logits, axis=-1)  # (B, k + 1, V)
    for j in range(k + 1):
        token = correction if j == k else ops.where(j < accepted, drafts[:, j], correction)
        logp = ops.take_along_axis(log_softmax[:, j], token[:, None], axis=-1)[:, 0]
        on = ops.logical_and(active, j <= accepted)
        state = _emit(state, token, logp, on, limit, table)
    slots = ops.arange(ops.shape(state["mask"])[1])[None, :]
    dead = ops.logical_and(slots > (c + accepted)[:, None], slots <= c + step)  # (B, L)
    mask = ops.logical_and(state["mask"], ops.logical_not(ops.logical_and(dead, active[:, None])))
    counted = ops.cast(active, "int32")
    return {
        **state, "c": c + step + 1, "last": correction,
        "prev": ops.take(chunk, step, axis=1), "pos": pos + accepted + 1, "cache": cache,
        "draft_cache": draft_cache, "mask": mask,
        "holes": state["holes"] + counted * (step - accepted),
        "drafted": state["drafted"] + counted * ops.sum(ops.cast(valid, "int32"), axis=1),
        "accepted": state["accepted"] + counted * accepted, "steps": state["steps"] + 1,
        "seeds": tuple(seeds),
    }


def running(state, limit, length, k):
    """Whether the loop goes on: a row is unfinished and the next chunk fits the cache."""
    del limit
    return ops.logical_and(ops.logical_not(ops.all(state["done"])),
                           state["c"] + k + 1 <= length)


def speculative_loop(target, draft, sampler, plan, token_ids, lengths, limit, table, new_slots,
                     seeds):
    """The whole generation in one program, shaped like `loops.sample_loop`'s results plus
    `(drafted (B,), accepted (B,), target forwards ())`."""
    context = target.model.max_sequence_length
    draft_context = draft.model.max_sequence_length if draft is not None else context
    state = start(target, draft, sampler, plan, token_ids, lengths, limit, table, new_slots,
                  seeds)
    prompt_slots = state.pop("prompt_slots")  # loop values must be tensors
    length = prompt_slots + new_slots + plan.k + plan.holes

    def cond(state):
        return running(state, limit, length, plan.k)

    def body(state):
        new = advance(target, draft, sampler, plan, {**state, "prompt_slots": prompt_slots},
                      limit, table, context, draft_context)
        new.pop("prompt_slots")
        return (new,)

    (state,) = ops.while_loop(cond, body, (state,), maximum_iterations=new_slots)
    tokens = state["text"][:, prompt_slots:]
    return (tokens, state["logprobs"], state["num"], state["stop_lengths"], state["seeds"],
            (state["drafted"], state["accepted"], state["steps"]))


def _bound(generator, prepared=None):
    """The target's and draft's bound decoders and the tensors they were prepared with."""
    if prepared is None:
        draft = generator.draft_decoder
        prepared = (generator.decoder.prepare(), draft.prepare() if draft is not None else ())
    target = generator.decoder.bind(prepared[0])
    draft = (generator.draft_decoder.bind(prepared[1]) if generator.draft_decoder is not None
             else None)
    return target, draft, prepared


def program(generator, batch):
    """The `Generator.generate` program for drafts: `(token_ids, lengths, limit, stops, seeds)`
    -> `speculative_loop`'s results."""
    plan = plan_for(generator.model, getattr(generator.draft_decoder, "model", None),
                    generator.sampler, batch, generator.num_draft_tokens, generator.max_ngram)

    def run(token_ids, lengths, limit, stops, seeds):
        target, draft, _ = _bound(generator)
        return speculative_loop(target, draft, generator.sampler, plan, token_ids, lengths,
                                limit, stops, batch.new_slots, seeds)

    return run


def stats(drafted, accepted, steps) -> dict:
    """`GenerationResult.stats` from the loop's counters."""
    drafted = [int(d) for d in ops.convert_to_numpy(drafted)]
    accepted = [int(a) for a in ops.convert_to_numpy(accepted)]
    return {"drafted": drafted, "accepted": accepted,
            "acceptance_rate": sum(accepted) / max(1, sum(drafted)),
            "target_forwards": int(ops.convert_to_numpy(steps))}


def stream_tokens(generator, batch, max_new_tokens):
    """The new ids of one prompt, a compiled iteration (1 to k + 1 tokens) at a time. Stops are
    the caller's (`Generator.stream` matches them in Python), so the program has none."""
    plan = plan_for(generator.model, getattr(generator.draft_decoder, "model", None),
                    generator.sampler, batch, generator.num_draft_tokens, generator.max_ngram)
    prompt_slots, new_slots = batch.token_ids.shape[1], batch.new_slots
    length = prompt_slots + new_slots + plan.k + plan.holes
    context = generator.model.max_sequence_length
    draft_context = (generator.draft_decoder.model.max_sequence_length
                     if generator.draft_decoder is not None else context)

    def first(token_ids, lengths, limit, stops, seeds):
        target, draft, prepared = _bound(generator)
        state = start(target, draft, generator.sampler, plan, token_ids, lengths, limit, stops,
                      new_slots, seeds)
        state.pop("prompt_slots")
        return state, prepared

    def step(prepared, state, limit, stops):
        target, draft, _ = _bound(generator, prepared)
        state = advance(target, draft, generator.sampler, plan,
                        {**state, "prompt_slots": prompt_slots}, limit, stops, context,
                        draft_context)
        state.pop("prompt_slots")
        return state

    key = (1, prompt_slots, new_slots)
    first_fn = generator._compiled("speculative_stream_start", key, first)
    step_fn = generator._compiled("speculative_stream_step", key, step)
    limit = ops.convert_to_tensor(np.int32(max_new_tokens))
    stops = ops.convert_to_tensor(np.full((1, 1), NO_TOKEN, np.int32))
    state, prepared = first_fn(ops.convert_to_tensor(batch.token_ids),
                               ops.convert_to_tensor(batch.lengths), limit, stops,
                               generator._seeds())
    emitted = 0
    while True:
        generator._keep_seeds(state["seeds"])
        num = int(ops.convert_to_numpy(state["num"])[0])
        if num > emitted:
            text = ops.convert_to_numpy(state["text"])[0]
            yield from (int(t) for t in text[prompt_slots + emitted:prompt_slots + num])
            emitted = num
        fits = int(ops.convert_to_numpy(state["c"])) + plan.k + 1 <= length
        if bool(ops.convert_to_numpy(state["done"])[0]) or not fits:
            return
        state = step_fn(prepared, state, limit, stops)
