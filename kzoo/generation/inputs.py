"""Turning user prompts and stop conditions into fixed-shape, left-padded arrays.

Everything here is plain NumPy and runs before the compiled loop: prompts of any form become
a list of token-id lists, which are left-padded into a power-of-two "bucket" so that prompts of
similar length reuse one compiled program.
"""

from dataclasses import dataclass

import numpy as np

# Marks an unused slot in the stop-sequence table and in the history window: never a token id.
NO_TOKEN = -1
MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def fine_bucket(n: int) -> int:
    """A padded length for `n` tokens with less padding than `bucket`: a power of two up to
    64, then a multiple of an eighth of the next power of two (72 -> 80, 200 -> 224), so padding
    wastes at most an eighth of a forward and an octave of lengths has at most 8 programs.
    For callers that know their lengths repeat (lm-eval's requests), where fewer padded
    positions are worth a few more compiled programs.

    Example: `[fine_bucket(n) for n in (5, 40, 75, 130)]` is `[16, 64, 80, 160]`.
    """
    top = bucket(n)
    if top <= 64:
        return top
    step = top // 8
    return -(-n // step) * step


def _as_id_list(row, where: str, vocab_size: int) -> list[int]:
    ids = np.asarray(row)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{where} must be a flat sequence of integer token ids. Received: {row!r}")
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"{where} holds token ids outside [0, {vocab_size}): {bad[:5]}")
    return ids


def normalize_prompts(prompts, tokenizer=None, padding_mask=None, vocab_size: int = 2**31 - 1):
    """Prompts as a list of token-id lists, plus whether they came in as text.

    Args:
        prompts: str, list[str], list[int], list[list[int]], a 2D int array, or a dict with
            "token_ids" (and optionally "padding_mask"). A 2D array is read with `padding_mask`
            (1 = real token), so left- and right-padded batches both work.
        tokenizer: kzoo tokenizer or None. needed for text prompts.
        padding_mask: array or None. (batch, seq) mask for a 2D `prompts` array.
        vocab_size: int. ids must lie in [0, vocab_size).

    Returns `(list_of_id_lists, is_text)`.
    """
    if isinstance(prompts, dict):
        if "token_ids" not in prompts:
            raise ValueError(f"A dict prompt needs 'token_ids'. Received keys: {sorted(prompts)}")
        padding_mask = prompts.get("padding_mask", padding_mask)
        prompts = prompts["token_ids"]
    if isinstance(prompts, list | tuple) and not prompts:
        raise ValueError("`prompts` is empty: pass at least one prompt of at least one token.")
    is_text = isinstance(prompts, str) or (
        isinstance(prompts, list | tuple) and prompts and all(isinstance(p, str) for p in prompts)
    )
    if is_text:
        if tokenizer is None:
            raise ValueError("Text prompts need a tokenizer: pass `tokenizer=` (kzoo.tokenizers).")
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = [np.asarray(tokenizer.encode(t)) for t in texts]
    elif isinstance(prompts, list | tuple) and prompts and all(
        isinstance(p, int | np.integer) for p in prompts
    ):
        rows = [prompts]  # one prompt given as a flat list of ids
    elif hasattr(prompts, "shape") and len(prompts.shape) == 1:
        rows = [prompts]
    elif hasattr(prompts, "shape") and len(prompts.shape) == 2:
        ids = np.asarray(prompts)
        mask = np.ones(ids.shape, bool) if padding_mask is None else np.asarray(padding_mask)
        if mask.shape != ids.shape:
            raise ValueError(
                f"`padding_mask` shape {mask.shape} does not match the prompts' {ids.shape}"
            )
        rows = [row[m.astype(bool)] for row, m in zip(ids, mask)]
    elif isinstance(prompts, list | tuple) and prompts:
        rows = list(prompts)
    else:
        raise ValueError(
            "`prompts` must be text, a list of texts, a list of token ids, a list of such lists, "
            f"or a (batch, seq) array. Received: {prompts!r}"
        )
    id_lists = [_as_id_list(row, f"prompt {i}", vocab_size) for i, row in enumerate(rows)]
    for i, ids in enumerate(id_lists):
        if not ids:
            raise ValueError(
                f"prompt {i} is empty: generation needs at least one token to condition on "
                "(for example the tokenizer's end-of-text id)."
            )
    return id_lists, bool(is_text)


def fit_context(id_lists, max_new_tokens: int, context: int, truncate: bool):
    """Check `prompt + max_new_tokens <= context`; with `truncate`, keep each prompt's tail."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int | np.integer):
        raise ValueError(
            f"`max_new_tokens` must be a positive integer. Received: {max_new_tokens!r}"
        )
    if not 0 < max_new_tokens < context:
        raise ValueError(
            f"`max_new_tokens` must be in [1, {context - 1}] for a model with "
            f"max_sequence_length={context}. Received: max_new_tokens={max_new_tokens}"
        )
    room = context - max_new_tokens
    fitted = []
    for i, ids in enumerate(id_lists):
        if len(ids) > room:
            if not truncate:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} "
                    f"it needs {len(ids) + max_new_tokens} positions but the model's context "
                    f"(max_sequence_length) is {context}. Shorten the prompt, lower "
                    "max_new_tokens, or pass truncate=True to keep the prompt's last "
                    f"{room} tokens (a sliding window)."
                )
            ids = ids[-room:]
        fitted.append(ids)
    return fitted


@dataclass(frozen=True)
class Batch:
    """Left-padded prompts ready for the compiled loop."""

    token_ids: np.ndarray  # (batch, prompt_slots) int32, real tokens right-aligned
    lengths: np.ndarray  # (batch,) int32 real prompt lengths
    new_slots: int  # static number of generation slots (>= max_new_tokens)


def left_pad(id_lists, max_new_tokens: int, context: int, pad_id: int = 0,
             prompt_bucket=bucket) -> Batch:
    """Pack prompts right-aligned into (batch, P) with P and the new-token slots N bucketed.

    Buckets are powers of two (P: `prompt_bucket` of the longest prompt), clipped so that
    P + N <= context. Left padding puts every
    prompt's last token in the same slot, so prefill covers only the prompt and all rows decode
    in lockstep; the pad slots are masked out and positions start at 0 at each real token.
    """
    longest = max(len(ids) for ids in id_lists)
    new_slots = min(bucket(max_new_tokens), context - longest)  # >= max_new_tokens (fit_context)
    prompt_slots = min(prompt_bucket(longest), context - new_slots)  # >= longest
    token_ids = np.full((len(id_lists), prompt_slots), pad_id, np.int32)
    for row, ids in enumerate(id_lists):
        token_ids[row, prompt_slots - len(ids):] = ids
    lengths = np.array([len(ids) for ids in id_lists], np.int32)
    return Batch(token_ids, lengths, new_slots)


def stop_table(stop_token_ids=None, stop_sequences=None, tokenizer=None, vocab_size=2**31 - 1):
    """All stop conditions as one right-aligned table (S, M) of ids, padded with `NO_TOKEN`.

    Single stop tokens are sequences of length 1. S and M are bucketed to powers of two (a
    table with no stops is a single all-padding row, which never matches).

    Args:
        stop_token_ids: int or list[int] or None. tokens that end a sequence.
        stop_sequences: str, or list of (list[int] or str), or None. multi-token stops; strings
            are encoded with `tokenizer` (matching happens on token ids). One string is one
            stop sequence, not one per character.
        tokenizer: kzoo tokenizer or None.
        vocab_size: int. ids must lie in [0, vocab_size).
    """
    sequences = []
    if stop_token_ids is not None:
        if isinstance(stop_token_ids, int | np.integer):
            stop_token_ids = [stop_token_ids]
        ids = _as_id_list(list(stop_token_ids), "`stop_token_ids`", vocab_size)
        sequences.extend([i] for i in ids)
    if isinstance(stop_sequences, str):  # iterating a str would make each character a stop
        stop_sequences = [stop_sequences]
    for i, seq in enumerate(stop_sequences or []):
        if isinstance(seq, str):
            if not seq:
                raise ValueError(f"stop_sequences[{i}] is an empty string; remove it.")
            if tokenizer is None:
                raise ValueError(f"stop_sequences[{i}]={seq!r} is text: pass `tokenizer=`.")
            seq = list(np.asarray(tokenizer.encode(seq)))
        seq = _as_id_list(list(seq), f"stop_sequences[{i}]", vocab_size)
        if not seq:
            raise ValueError(f"stop_sequences[{i}] is empty; a stop sequence needs >= 1 token.")
        sequences.append(seq)
    rows = bucket(len(sequences), minimum=1)
    width = bucket(max((len(s) for s in sequences), default=1), minimum=1)
    table = np.full((rows, width), NO_TOKEN, np.int32)
    for r, seq in enumerate(sequences):
        table[r, width - len(seq):] = seq
    return table
