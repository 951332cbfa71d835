"""The decode programs compiled by `kzoo.backend.compile_function`: prefill, sampling loop,
beam loop, one step.

Shapes are fixed per bucket: B prompts left-padded to P slots, N generation slots, a cache of
L = P + N slots (its structure is the decoder's business), and a stop table (S, M). Slot `P + i`
holds the i-th new token; a row with a prompt of length n has its real tokens in slots
[P - n, P) at positions 0..n-1, so the i-th new token sits at position n + i.

The programs are pure: the sampler's seed state comes in as `seeds` and the new state goes out
with the results (a JAX program cannot assign to a variable, least of all inside a loop).
"""

from keras import ops, tree

from kzoo import backend
from kzoo.generation.inputs import NO_TOKEN
from kzoo.samplers import Sampler
from kzoo.samplers import functional as F
from kzoo.samplers.sampler import with_seeds


def pick_token(sampler, logits, counts):
    """Next ids (batch,) from any sampler: kzoo layers get the token counts, keras_hub ones
    go through their `compute_probabilities` / `get_next_token` protocol."""
    if isinstance(sampler, Sampler):
        return ops.cast(sampler(logits, token_counts=counts), "int32")
    return ops.cast(sampler.get_next_token(sampler.compute_probabilities(logits)), "int32")


def draw(sampler, logits, counts, seeds):
    """`pick_token` with the seed state passed in and out: `(token (B,), seeds)`."""
    return with_seeds(sampler, seeds, lambda: pick_token(sampler, logits, counts))


def sampler_scores(sampler, logits, counts):
    """Log-probabilities (batch, vocab) a beam search ranks by."""
    if isinstance(sampler, Sampler):
        return ops.log_softmax(sampler.process_logits(logits, counts), axis=-1)
    return ops.log(ops.maximum(sampler.compute_probabilities(logits), 1e-38))


def uses_counts(sampler) -> bool:
    return bool(getattr(sampler, "uses_token_counts", False))


def prefill(decoder, token_ids, lengths, new_slots):
    """Run the prompt through the model once, filling a fresh cache.

    Returns `(last_logits (B, V), cache, padding_mask (B, L))`.
    """
    batch, prompt_slots = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
    total = prompt_slots + new_slots
    start = prompt_slots - lengths  # (B,) first real slot of each row
    slots = ops.arange(total)
    padding_mask = slots[None, :] >= start[:, None]  # (B, L): pads off, generated slots on
    positions = ops.maximum(ops.arange(prompt_slots)[None, :] - start[:, None], 0)  # (B, P)
    cache = decoder.init_cache(batch, total)
    logits, cache = decoder.call_with_cache(token_ids, cache, 0, padding_mask, positions)
    return logits[:, -1, :], cache, padding_mask


def prompt_counts(token_ids, lengths, vocab_size):
    """Token counts (B, V) of the real prompt tokens (for the penalties)."""
    prompt_slots = ops.shape(token_ids)[1]
    real = ops.arange(prompt_slots)[None, :] >= (prompt_slots - lengths)[:, None]
    return F.token_counts(token_ids, vocab_size, real)


def stop_match(window, table):
    """Which rows' last M tokens end with a stop sequence, and its length.

    Args:
        window: int (B, M) the latest M generated tokens (`NO_TOKEN` before the first).
        table: int (S, M) right-aligned stop sequences padded with `NO_TOKEN`.

    Returns `(hit (B,) bool, length (B,) int32)`.
    """
    used = table != NO_TOKEN  # (S, M)
    equal = ops.equal(window[:, None, :], table[None, :, :])  # (B, S, M)
    full = ops.all(ops.logical_or(equal, ~used[None]), axis=-1)  # (B, S)
    full = ops.logical_and(full, ops.any(used, axis=-1)[None])  # all-padding rows never match
    lengths = ops.sum(ops.cast(used, "int32"), axis=-1)  # (S,)
    matched = ops.max(ops.where(full, lengths[None, :], 0), axis=-1)
    return ops.any(full, axis=-1), matched


def sample_loop(decoder, sampler, token_ids, lengths, max_new_tokens, stop_table, new_slots,
                pad_id=0, seeds=()):
    """Prefill, then sample up to `max_new_tokens` tokens with the KV cache.

    Returns `(tokens (B, N), logprobs (B, N), num_tokens (B,), stop_lengths (B,), seeds)`; a row's
    tokens after its stop are `pad_id`, `stop_lengths` is the length of the stop it hit (0 if
    none).
    """
    batch, prompt_slots = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
    vocab = decoder.model.vocab_size
    width = ops.shape(stop_table)[1]
    logits, cache, padding_mask = prefill(decoder, token_ids, lengths, new_slots)
    counts = prompt_counts(token_ids, lengths, vocab) if uses_counts(sampler) else ops.zeros((1,))
    # History of generated tokens, with M - 1 leading NO_TOKEN columns so the stop window
    # ending at step i is always the slice [i, i + M).
    history = ops.full((batch, width - 1 + new_slots), NO_TOKEN, "int32")
    logprobs = ops.zeros((batch, new_slots), "float32")
    done = ops.zeros((batch,), "bool")
    num_tokens = ops.zeros((batch,), "int32")
    stop_lengths = ops.zeros((batch,), "int32")

    def cond(i, logits, cache, history, logprobs, done, num_tokens, stop_lengths, counts, seeds):
        return ops.logical_and(i < max_new_tokens, ops.logical_not(ops.all(done)))

    def body(i, logits, cache, history, logprobs, done, num_tokens, stop_lengths, counts, seeds):
        token, seeds = draw(sampler, logits, counts if uses_counts(sampler) else None, seeds)
        token = ops.where(done, pad_id, token)  # (B,) finished rows emit padding
        logp = ops.take_along_axis(ops.log_softmax(logits, axis=-1), token[:, None], axis=-1)
        history = backend.update_slice(history, [0, width - 1 + i], token[:, None])
        logprobs = backend.update_slice(logprobs, [0, i], ops.where(done, 0.0, logp[:, 0])[:, None])
        hit, hit_length = stop_match(ops.slice(history, [0, i], [batch, width]), stop_table)
        hit = ops.logical_and(hit, ops.logical_not(done))
        num_tokens = num_tokens + ops.cast(ops.logical_not(done), "int32")
        stop_lengths = ops.where(hit, hit_length, stop_lengths)
        done = ops.logical_or(done, hit)
        if uses_counts(sampler):
            counts = counts + ops.one_hot(token, vocab, dtype="float32")
        positions = (lengths + i)[:, None]  # (B, 1)
        logits, cache = decoder.call_with_cache(
            token[:, None], cache, prompt_slots + i, padding_mask, positions
        )
        return (i + 1, logits[:, -1, :], cache, history, logprobs, done, num_tokens,
                stop_lengths, counts, seeds)

    state = (ops.convert_to_tensor(0, "int32"), logits, cache, history, logprobs, done,
             num_tokens, stop_lengths, counts, tuple(seeds))
    state = ops.while_loop(cond, body, state, maximum_iterations=new_slots)
    _, _, _, history, logprobs, _, num_tokens, stop_lengths, _, seeds = state
    return history[:, width - 1:], logprobs, num_tokens, stop_lengths, seeds


def beam_loop(decoder, sampler, token_ids, lengths, max_new_tokens, stop_table, new_slots,
              pad_id=0, seeds=()):
    """Beam search with the KV cache; returns the best beam per prompt, shaped as `sample_loop`.

    Beams live flattened on the batch axis (B * K); each step scores the K * V continuations of
    every prompt, keeps the K best, and gathers cache and history rows to follow them. A beam
    that hit a stop keeps its score and only extends with padding.
    """
    beams = sampler.num_beams
    batch, prompt_slots = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
    vocab = decoder.model.vocab_size
    width = ops.shape(stop_table)[1]
    logits, cache, padding_mask = prefill(decoder, token_ids, lengths, new_slots)

    def tile(x):  # (B, ...) -> (B * K, ...), each prompt's beams adjacent
        return tree.map_structure(lambda t: ops.repeat(t, beams, axis=0), x)

    logits, cache, padding_mask, lengths_k = map(tile, (logits, cache, padding_mask, lengths))
    counts = (tile(prompt_counts(token_ids, lengths, vocab)) if uses_counts(sampler)
              else ops.zeros((1,)))
    # Only the first beam of each prompt is live at the start, so the K beams do not coincide.
    first_only = ops.convert_to_tensor([0.0] + [-1e9] * (beams - 1), "float32")
    scores = ops.reshape(ops.tile(first_only[None], (batch, 1)), (-1,))  # (B * K,)
    history = ops.full((batch * beams, width - 1 + new_slots), NO_TOKEN, "int32")
    logprobs = ops.zeros((batch * beams, new_slots), "float32")
    done = ops.zeros((batch * beams,), "bool")
    num_tokens = ops.zeros((batch * beams,), "int32")
    stop_lengths = ops.zeros((batch * beams,), "int32")
    pad_row = ops.one_hot(ops.convert_to_tensor([pad_id]), vocab, dtype="bool")  # (1, V)

    def cond(i, logits, cache, scores, history, logprobs, done, num_tokens, stop_lengths, counts):
        return ops.logical_and(i < max_new_tokens, ops.logical_not(ops.all(done)))

    def body(i, logits, cache, scores, history, logprobs, done, num_tokens, stop_lengths, counts):
        step = sampler_scores(sampler, logits, counts if uses_counts(sampler) else None)
        # A finished beam continues with padding at no cost, so its score is frozen.
        step = ops.where(done[:, None], ops.where(pad_row, 0.0, -1e9), step)  # (B*K, V)
        total = ops.reshape(scores[:, None] + step, (batch, beams * vocab))  # (B, K * V)
        scores, flat = ops.top_k(total, k=beams, sorted=True)  # (B, K)
        parent = flat // vocab + ops.arange(batch)[:, None] * beams  # (B, K) rows to follow
        parent = ops.reshape(parent, (-1,))  # (B * K,)
        token = ops.cast(ops.reshape(flat % vocab, (-1,)), "int32")  # (B * K,)
        scores = ops.reshape(scores, (-1,))

        def follow(x):  # the cache may be a tensor or a tuple of tensors
            return tree.map_structure(lambda t: ops.take(t, parent, axis=0), x)

        cache, history, logprobs, done, num_tokens, stop_lengths, logits = map(
            follow, (cache, history, logprobs, done, num_tokens, stop_lengths, logits))
        if uses_counts(sampler):
            counts = follow(counts) + ops.one_hot(token, vocab, dtype="float32")
        logp = ops.take_along_axis(ops.log_softmax(logits, axis=-1), token[:, None], axis=-1)
        history = backend.update_slice(history, [0, width - 1 + i], token[:, None])
        logprobs = backend.update_slice(logprobs, [0, i], ops.where(done, 0.0, logp[:, 0])[:, None])
        hit, hit_length = stop_match(ops.slice(history, [0, i], [batch * beams, width]), stop_table)
        hit = ops.logical_and(hit, ops.logical_not(done))
        num_tokens = num_tokens + ops.cast(ops.logical_not(done), "int32")
        stop_lengths = ops.where(hit, hit_length, stop_lengths)
        done = ops.logical_or(done, hit)
        logits, cache = decoder.call_with_cache(
            token[:, None], cache, prompt_slots + i, padding_mask, (lengths_k + i)[:, None]
        )
        return (i + 1, logits[:, -1, :], cache, scores, history, logprobs, done, num_tokens,
                stop_lengths, counts)

    state = (ops.convert_to_tensor(0, "int32"), logits, cache, scores, history, logprobs, done,
             num_tokens, stop_lengths, counts)
    state = ops.while_loop(cond, body, state, maximum_iterations=new_slots)
    _, _, _, scores, history, logprobs, _, num_tokens, stop_lengths, _ = state
    # Beams come out of top_k sorted, so beam 0 of each prompt is the best.
    best = ops.arange(batch) * beams
    pick = lambda x: ops.take(x, best, axis=0)  # noqa: E731
    return (pick(history)[:, width - 1:], pick(logprobs), pick(num_tokens), pick(stop_lengths),
            tuple(seeds))  # beam search draws nothing


def decode_step(decoder, sampler, token, cache, index, padding_mask, positions, counts, seeds):
    """One streaming step: feed `token` (B,) at slot `index`, pick the next token.

    Returns `(next_token (B,), logprob (B,), cache, counts, seeds)`.
    """
    logits, cache = decoder.call_with_cache(
        token[:, None], cache, index, padding_mask, positions[:, None]
    )
    return pick_with_logprob(sampler, logits[:, -1, :], cache, counts, decoder.model.vocab_size,
                             seeds)


def pick_with_logprob(sampler, logits, cache, counts, vocab, seeds):
    """Pick from `logits` (B, V); returns `(token, logprob, cache, counts, seeds)`."""
    token, seeds = draw(sampler, logits, counts if uses_counts(sampler) else None, seeds)
    logp = ops.take_along_axis(ops.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
    if uses_counts(sampler):
        counts = counts + ops.one_hot(token, vocab, dtype="float32")
    return token, logp, cache, counts, seeds
