"""Contrastive search (Su et al. 2022) inside the compiled, KV-cached generator.

Each step takes the `top_k` most likely next tokens of every row, runs the model once on all
of them (the batch tiled to B * k rows, each with its row's KV cache), and keeps the candidate
with the best score

    (1 - penalty_alpha) * p(candidate) - penalty_alpha * max_j cos(h(candidate), h_j),

where h are the final-norm hidden states (`CausalLM.call_with_cache(return_hidden_states=True)`)
and j runs over every earlier real token of the row: the prompt's (from the prefill) and the
tokens chosen so far. The chosen candidate's forward is the step: its cache rows, logits and
hidden state are kept, so each new token costs one forward of B * k rows.

Where kzoo follows keras-hub 0.32's `ContrastiveSampler` (same tokens, tested):
- p is the softmax of the raw logits (temperature 1, no filtering) and the score uses it, not
  log p; the penalty is the maximum cosine similarity, with the prompt's hidden states counted;
- the hidden state of a token is the one computed at its own position (the prompt's from the
  prefill, a new token's from its candidate forward), after the final norm;
- ties go to the first best candidate of `ops.argmax`; kzoo's candidates are sorted by
  probability (keras-hub asks top_k for `sorted=False`), so a tie goes to the likelier one.
What differs: kzoo left-pads a ragged batch, so pad slots are masked out of the similarity
(keras-hub right-pads and overwrites padding as it goes); the cosine's norm product is floored
at 1e-12 (keras-hub divides by it as is).

transformers 5.25 no longer has contrastive search in core: `penalty_alpha` loads the hub repo
"transformers-community/contrastive-search" (`custom_generate`), not available offline.

Example:
```python
from kzoo import samplers
from kzoo.generation import Generator
from kzoo.models import CausalLM
model = CausalLM.from_preset("gpt_nano", vocab_size=64)
sampler = samplers.get("contrastive", penalty_alpha=0.6, top_k=4)
Generator(model, sampler).generate([[5, 6, 7], [8]], max_new_tokens=8).token_ids
```
"""

import numpy as np
from keras import ops, tree

from kzoo import backend
from kzoo.generation import loops
from kzoo.generation.inputs import NO_TOKEN
from kzoo.samplers.contrastive import COMBINES, ContrastiveSampler, cosine_similarity


def as_kzoo(sampler):
    """keras-hub's `ContrastiveSampler(k, alpha)` as kzoo's (the search needs the generator's
    hidden states, which keras-hub's sampler reads from its own loop); anything else as is."""
    hub_class = type(sampler).__module__.startswith("keras_hub")
    if hub_class and type(sampler).__name__ == "ContrastiveSampler":
        return ContrastiveSampler(penalty_alpha=sampler.alpha, top_k=sampler.k)
    return sampler


def check(model, sampler, draft) -> bool:
    """Whether `sampler` asks for contrastive search; one-line ValueErrors for what it does
    not combine with (drafts) or cannot do (more candidates than the vocabulary)."""
    if not isinstance(sampler, ContrastiveSampler):
        return False
    if draft is not None:
        raise ValueError(f"Contrastive search does not combine with draft tokens (`draft=`): "
                         f"{COMBINES}; use one or the other.")
    if sampler.k > model.vocab_size:
        raise ValueError(f"`top_k`={sampler.k} exceeds the model's vocab_size="
                         f"{model.vocab_size}: contrastive search scores top_k distinct tokens.")
    return True


def start(decoder, token_ids, lengths, new_slots, width):
    """Prefill with hidden states: the loop's state (a dict of tensors).

    `width` is the stop table's width M (the history keeps M - 1 leading `NO_TOKEN` columns,
    as `loops.sample_loop`'s does).
    """
    batch, prompt_slots = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
    total = prompt_slots + new_slots
    first = prompt_slots - lengths  # (B,) first real slot of each row
    mask = ops.arange(total)[None, :] >= first[:, None]  # (B, L): pads off, new slots on
    positions = ops.maximum(ops.arange(prompt_slots)[None, :] - first[:, None], 0)  # (B, P)
    cache = decoder.init_cache(batch, total)
    logits, cache, hidden = decoder.call_with_cache(token_ids, cache, 0, mask, positions,
                                                    return_hidden=True)  # hidden (B, P, H)
    hidden = ops.cast(hidden, "float32")
    # Every slot's hidden state, (B, L, H): the prompt's now, each new token's when chosen.
    context = ops.concatenate(
        [hidden, ops.zeros((batch, new_slots, ops.shape(hidden)[2]), "float32")], axis=1)
    zeros = ops.zeros((batch,), "int32")
    return {
        "i": ops.convert_to_tensor(0, "int32"), "logits": logits[:, -1, :], "cache": cache,
        "context": context, "mask": mask,
        "history": ops.full((batch, width - 1 + new_slots), NO_TOKEN, "int32"),
        "logprobs": ops.zeros((batch, new_slots), "float32"), "done": ops.zeros((batch,), "bool"),
        "num": zeros, "stop_lengths": zeros,
    }


def advance(decoder, sampler, state, lengths, prompt_slots, table, pad_id=0):
    """One step: score the top-k candidates of every row with one forward of B * k rows and
    keep the best; returns the new state (its `history` holds the chosen token)."""
    k, alpha = sampler.k, sampler.penalty_alpha
    i, logits, mask = state["i"], state["logits"], state["mask"]
    batch, slots = ops.shape(mask)[0], ops.shape(mask)[1]
    probs, candidates = ops.top_k(ops.softmax(logits, axis=-1), k=k, sorted=True)  # (B, k)
    candidates = ops.cast(candidates, "int32")

    copies = ops.arange(batch * k, dtype="int32") // k  # (B * k,) each row k times, adjacent

    def tile(x):  # (B, ...) -> (B * k, ...). A gather, not `ops.repeat`: PyTorch may return a
        # broadcast view for one row, which the cache's in-place slot writes refuse.
        return ops.take(x, copies, axis=0)

    positions = tile(lengths + i)[:, None]  # (B * k, 1)
    cand_logits, cand_cache, cand_hidden = decoder.call_with_cache(
        ops.reshape(candidates, (batch * k, 1)), tree.map_structure(tile, state["cache"]),
        prompt_slots + i, tile(mask), positions, return_hidden=True)
    cand_hidden = ops.reshape(ops.cast(cand_hidden[:, -1, :], "float32"), (batch, k, -1))
    similarity = cosine_similarity(state["context"], cand_hidden)  # (B, k, L)
    seen = ops.logical_and(mask, ops.arange(slots)[None, :] < prompt_slots + i)  # (B, L)
    # -1, the lowest cosine, for pads and slots not written yet (keras-hub's choice too).
    similarity = ops.where(seen[:, None, :], similarity, -1.0)
    score = (1.0 - alpha) * probs - alpha * ops.max(similarity, axis=-1)  # (B, k)
    best = ops.cast(ops.argmax(score, axis=1), "int32")  # (B,)
    token = ops.take_along_axis(candidates, best[:, None], axis=1)[:, 0]  # (B,)
    rows = ops.arange(batch, dtype="int32") * k + best  # (B,) the chosen candidate's row

    def pick(x):  # (B * k, ...) -> (B, ...)
        return ops.take(x, rows, axis=0)

    chosen_hidden = ops.take_along_axis(cand_hidden, best[:, None, None], axis=1)  # (B, 1, H)
    context = backend.update_slice(state["context"], [0, prompt_slots + i, 0], chosen_hidden)

    # The bookkeeping of `loops.sample_loop`: finished rows emit padding and stay finished.
    done = state["done"]
    width = ops.shape(table)[1]
    token = ops.where(done, pad_id, token)
    logp = ops.take_along_axis(ops.log_softmax(logits, axis=-1), token[:, None], axis=-1)
    history = backend.update_slice(state["history"], [0, width - 1 + i], token[:, None])
    logprobs = backend.update_slice(state["logprobs"], [0, i],
                                    ops.where(done, 0.0, logp[:, 0])[:, None])
    hit, hit_length = loops.stop_match(ops.slice(history, [0, i], [batch, width]), table)
    hit = ops.logical_and(hit, ops.logical_not(done))
    return {
        **state, "i": i + 1, "logits": pick(cand_logits[:, -1, :]),
        "cache": tree.map_structure(pick, cand_cache), "context": context,
        "history": history, "logprobs": logprobs, "done": ops.logical_or(done, hit),
        "num": state["num"] + ops.cast(ops.logical_not(done), "int32"),
        "stop_lengths": ops.where(hit, hit_length, state["stop_lengths"]),
    }


def contrastive_loop(decoder, sampler, token_ids, lengths, limit, table, new_slots, pad_id=0,
                     seeds=()):
    """The whole search in one program, returning what `loops.sample_loop` returns."""
    prompt_slots = ops.shape(token_ids)[1]
    width = ops.shape(table)[1]
    state = start(decoder, token_ids, lengths, new_slots, width)

    def cond(state):
        return ops.logical_and(state["i"] < limit, ops.logical_not(ops.all(state["done"])))

    def body(state):
        return (advance(decoder, sampler, state, lengths, prompt_slots, table, pad_id),)

    (state,) = ops.while_loop(cond, body, (state,), maximum_iterations=new_slots)
    return (state["history"][:, width - 1:], state["logprobs"], state["num"],
            state["stop_lengths"], tuple(seeds))  # the search draws nothing


def program(generator, batch):
    """The `Generator.generate` program: `(token_ids, lengths, limit, stops, seeds)` ->
    `contrastive_loop`'s results."""

    def run(token_ids, lengths, limit, stops, seeds):
        decoder = generator.decoder.bind(generator.decoder.prepare())
        return contrastive_loop(decoder, generator.sampler, token_ids, lengths, limit, stops,
                                batch.new_slots, generator.pad_id, seeds)

    return run


def stream_tokens(generator, batch, max_new_tokens):
    """The new ids of one prompt, one compiled step each. Stops are the caller's
    (`Generator.stream` matches them in Python), so the programs get an empty stop table."""
    prompt_slots, new_slots = batch.token_ids.shape[1], batch.new_slots
    sampler, pad_id = generator.sampler, generator.pad_id
    table = ops.convert_to_tensor(np.full((1, 1), NO_TOKEN, np.int32))

    def first(token_ids, lengths, stops):
        prepared = generator.decoder.prepare()  # fed back to every step unchanged
        state = start(generator.decoder.bind(prepared), token_ids, lengths, new_slots,
                      ops.shape(stops)[1])
        return state, prepared

    def step(prepared, state, lengths, stops):
        return advance(generator.decoder.bind(prepared), sampler, state, lengths, prompt_slots,
                       stops, pad_id)

    key = (1, prompt_slots, new_slots)
    first_fn = generator._compiled("contrastive_stream_start", key, first)
    step_fn = generator._compiled("contrastive_stream_step", key, step)
    lengths = ops.convert_to_tensor(batch.lengths)
    state, prepared = first_fn(ops.convert_to_tensor(batch.token_ids), lengths, table)
    for i in range(max_new_tokens):
        state = step_fn(prepared, state, lengths, table)
        yield int(ops.convert_to_numpy(state["history"])[0, i])
