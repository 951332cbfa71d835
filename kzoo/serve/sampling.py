"""Sampling with settings that differ row by row, inside one compiled decode step.

`kzoo.samplers.functional` filters take one setting for the whole batch (a Python number),
which fixes them into the compiled program; a server's rows belong to different requests, each
with its own temperature, top-k, top-p, min-p and seed. `pick` takes them as (rows,) tensors and
applies the same filters in kzoo's order (temperature -> top-k -> top-p -> min-p -> draw), with
the same tie rules.

The draw is by inverse CDF with one uniform number per row that the caller derives from the
request's (seed, choice, token index) (`uniform`): a row's token depends on its own logits and
that number only, never on the other rows or on a shared random stream, so the same seed gives
the same tokens alone or in a full batch.

Sorting the vocabulary (50,257 ids at GPT-2's size) costs about as much as the model's own
step at 16 rows, and only top-p needs an order. So a row without top-p is drawn over its kept
tokens in vocabulary order, its top-k threshold (the k-th largest logit: a selected value, no
arithmetic) read from whichever candidates the step computed; a row with top-p and a top-k of
at most `HEAD_K` is drawn over its `HEAD` most likely tokens, sorted; only a row with top-p and
no such top-k needs the whole vocabulary sorted. Which of these a step computes (`plan`)
depends on the batch, but what each row is drawn over, and how, depends on its own settings
alone, so its token does not depend on the other rows.

Example:
```python
import numpy as np
from kzoo.serve.sampling import pick, uniform
logits = np.log(np.array([[0.5, 0.3, 0.2]], "float32"))
settings = {"temperature": np.array([1.0], "float32"), "top_k": np.array([0], "int32"),
            "top_p": np.array([1.0], "float32"), "min_p": np.array([0.0], "float32"),
            "u": np.array([uniform(7, 0, 0)], "float32")}
token, logp, top_ids, top_logps = pick(logits, settings, top_n=2)   # token (1,)
```
"""

from __future__ import annotations

import numpy as np
from keras import ops

from kzoo.samplers.functional import NEG_INF

TOP_N = 20  # the most alternatives a request may ask for (OpenAI's top_logprobs limit)


def uniform(seed: int, choice: int, index: int) -> float:
    """The uniform number in [0, 1) that draws token `index` of `choice` for `seed`."""
    return float(np.random.default_rng([seed & (2**63 - 1), choice, index]).random())


def settings_arrays(rows: list[dict | None]) -> dict:
    """Per-row setting arrays from one dict per row (None: an empty slot, greedy)."""
    def column(key, default, dtype):
        return np.array([default if r is None else r[key] for r in rows], dtype)

    return {"temperature": column("temperature", 0.0, "float32"),
            "top_k": column("top_k", 0, "int32"), "top_p": column("top_p", 1.0, "float32"),
            "min_p": column("min_p", 0.0, "float32"), "u": column("u", 0.0, "float32")}


HEAD = 1024  # the candidates a top-p row with a small top-k is drawn from (no full sort)
HEAD_K = 256  # the largest top-k drawn so: its ties would have to run past rank HEAD


def plan(rows: list[dict | None], vocab: int) -> tuple[bool, bool, int]:
    """`(sort, head, width)` of the `pick` variant that serves `rows` (one dict per row, None:
    an empty slot).

    sort: some sampled row uses top-p without a top-k of at most `HEAD_K`. head: some sampled
    row uses top-p with one. width: the top-k candidates for the rows without top-p (a power
    of 4 from 16, at most `vocab`; 0 when none uses top-k or when `sort` gives them), so that
    few programs are compiled.
    """
    sampled = [r for r in rows if r is not None and r["temperature"] > 0]
    nucleus = [r for r in sampled if r["top_p"] < 1.0]
    head = any(0 < r["top_k"] <= HEAD_K for r in nucleus)
    sort = any(not 0 < r["top_k"] <= HEAD_K for r in nucleus)
    k = max((int(r["top_k"]) for r in sampled if r["top_p"] >= 1.0 and r["top_k"] > 0),
            default=0)
    width = 16
    while width < k:
        width *= 4
    return sort, head, (min(width, vocab) if k and not sort else 0)


def pick(logits, settings: dict, top_n: int = TOP_N, sort: bool = True, head: bool = True,
         width: int = 0):
    """The next token of each row under its own settings.

    Which tokens a row is drawn over, and in which order, depends on its own settings only:
    with top-p and a top-k of at most `HEAD_K`, its `HEAD` most likely tokens, sorted; with
    another top-p, the whole sorted vocabulary; without top-p, its kept tokens in id order.

    Args:
        logits: float tensor. (rows, vocab).
        settings: dict of (rows,) tensors: temperature (0 = greedy), top_k (0 = off), top_p
            (1 = off), min_p (0 = off), u (the row's uniform number in [0, 1)).
        top_n: int. how many of the most likely tokens to report.
        sort: bool. sort the vocabulary (rows with top-p and no top-k of at most `HEAD_K`).
        head: bool. compute the `HEAD` candidates (rows with top-p and such a top-k).
        width: int. without `sort`, the top-k candidates of the rows without top-p (at least
            their largest top_k; 0 when none uses top-k). `plan` gives all three.

    Returns `(token (rows,) int32, logprob (rows,), top_ids (rows, top_n), top_logprobs
    (rows, top_n))`; log-probabilities are the model's own (temperature 1, unfiltered), as
    `kzoo.generation` reports them.
    """
    logits = ops.cast(logits, "float32")
    vocab = ops.shape(logits)[-1]
    logp = ops.log_softmax(logits, axis=-1)  # (rows, vocab)
    temperature = ops.cast(settings["temperature"], "float32")
    scaled = logits / ops.maximum(temperature, 1e-6)[:, None]
    top_k = ops.cast(settings["top_k"], "int32")
    top_p = ops.cast(settings["top_p"], "float32")
    min_p = ops.cast(settings["min_p"], "float32")[:, None]
    # min-p: p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
    floor = ops.max(scaled, axis=-1, keepdims=True) + ops.log(ops.maximum(min_p, 1e-30))
    if sort:
        ordered, order = ops.top_k(scaled, k=vocab, sorted=True)  # (rows, vocab) descending
        kth = _kth(ordered, top_k)
    elif width:
        kth = _kth(ops.top_k(scaled, k=width, sorted=True)[0], top_k)  # (rows, 1)
    else:
        kth = ops.full_like(floor, -float("inf"))
    keep = ops.logical_and(scaled >= kth, ops.logical_or(scaled >= floor, min_p <= 0.0))
    token = _draw(scaled, keep, settings["u"])  # vocabulary order: ids are the indices
    in_head = ops.logical_and(top_k > 0, top_k <= HEAD_K)
    if sort:
        drawn = ops.take_along_axis(order, _draw(ordered, _sorted_keep(
            ordered, _kth(ordered, top_k), floor, settings), settings["u"])[:, None],
            axis=-1)[:, 0]
        token = ops.where(ops.logical_and(top_p < 1.0, ops.logical_not(in_head)), drawn, token)
    if head:
        candidates, ids = ops.top_k(scaled, k=min(HEAD, vocab), sorted=True)  # (rows, HEAD)
        drawn = ops.take_along_axis(ids, _draw(candidates, _sorted_keep(
            candidates, _kth(candidates, top_k), floor, settings), settings["u"])[:, None],
            axis=-1)[:, 0]
        token = ops.where(ops.logical_and(top_p < 1.0, in_head), drawn, token)
    greedy = ops.argmax(logits, axis=-1)
    token = ops.cast(ops.where(temperature <= 0.0, greedy, token), "int32")
    picked = ops.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
    top_logps, top_ids = ops.top_k(logp, k=min(top_n, vocab), sorted=True)
    return token, picked, ops.cast(top_ids, "int32"), top_logps


def _kth(candidates, top_k):
    """The k-th largest of each row's sorted `candidates` (rows, n) as (rows, 1); -inf where
    top_k is 0. A selected value, so the same from any candidates that hold it."""
    size = ops.shape(candidates)[-1]
    # cast back: with a Python int in it, `where` gives floatx on JAX (bfloat16: not an index)
    k = ops.cast(ops.where(top_k > 0, ops.minimum(top_k, size), size), "int32")
    kth = ops.take_along_axis(candidates, (k - 1)[:, None], axis=-1)
    return ops.where(top_k[:, None] > 0, kth, -float("inf"))


def _sorted_keep(ordered, kth, floor, settings):
    """Top-k, top-p and min-p on the sorted logits (rows, vocab) of rows with top-p."""
    keep = ordered >= kth
    # top-p on what top-k kept: the smallest head whose mass reaches p, the crossing token kept;
    # the tail is summed from the smallest up, as `top_p_filter` does (no float32 saturation).
    probs = ops.softmax(ops.where(keep, ordered, NEG_INF), axis=-1)
    tail = ops.flip(ops.cumsum(ops.flip(probs, axis=-1), axis=-1), axis=-1)
    p = ops.cast(settings["top_p"], "float32")[:, None]
    rank = ops.arange(ops.shape(ordered)[-1])[None, :]
    nucleus = ops.logical_or(ops.logical_or(tail > 1.0 - p, rank == 0), p >= 1.0)
    cutoff = ops.min(ops.where(ops.logical_and(keep, nucleus), ordered, float("inf")), axis=-1,
                     keepdims=True)
    keep = ops.logical_and(keep, ordered >= cutoff)  # ties with the last kept token stay
    min_p = ops.cast(settings["min_p"], "float32")[:, None]
    return ops.logical_and(keep, ops.logical_or(ordered >= floor, min_p <= 0.0))


def _draw(values, keep, u):
    """Inverse CDF over the kept entries of `values` (rows, n), in their order: the index
    (rows,) where the row's uniform number `u` falls."""
    probs = ops.softmax(ops.where(keep, values, NEG_INF), axis=-1)
    cdf = ops.cumsum(probs, axis=-1)
    u = ops.cast(u, "float32")[:, None] * cdf[:, -1:]
    # A float64 uniform above 1 - 2**-25 is 1.0 in float32, and then every cdf entry is <= u:
    # stop at the first token where the cdf reaches its total, the last one that adds any mass
    # (dropped tokens add none, so it is a kept one; the least likely may have probability 0).
    last = ops.sum(ops.cast(cdf < cdf[:, -1:], "int32"), axis=-1, keepdims=True)  # (rows, 1)
    return ops.minimum(ops.sum(ops.cast(cdf <= u, "int32"), axis=-1), last[:, 0])
