"""Sampling with settings that differ row by row, inside one compiled decode step.

`kzoo.samplers.functional` filters take one setting for the whole batch (a Python number),
which fixes them into the compiled program; a server's rows belong to different requests, each
with its own temperature, top-k, top-p, min-p and seed. `pick` takes them as (rows,) tensors and
applies the same filters in kzoo's order (temperature -> top-k -> top-p -> min-p -> draw), with
the same tie rules, on the sorted logits.

The draw is by inverse CDF with one uniform number per row that the caller derives from the
request's (seed, choice, token index) (`uniform`): a row's token depends on its own logits and
that number only, never on the other rows or on a shared random stream, so the same seed gives
the same tokens alone or in a full batch.

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


def pick(logits, settings: dict, top_n: int = TOP_N):
    """The next token of each row under its own settings.

    Args:
        logits: float tensor. (rows, vocab).
        settings: dict of (rows,) tensors: temperature (0 = greedy), top_k (0 = off), top_p
            (1 = off), min_p (0 = off), u (the row's uniform number in [0, 1)).
        top_n: int. how many of the most likely tokens to report.

    Returns `(token (rows,) int32, logprob (rows,), top_ids (rows, top_n), top_logprobs
    (rows, top_n))`; log-probabilities are the model's own (temperature 1, unfiltered), as
    `kzoo.generation` reports them.
    """
    logits = ops.cast(logits, "float32")
    vocab = ops.shape(logits)[-1]
    logp = ops.log_softmax(logits, axis=-1)  # (rows, vocab)
    temperature = ops.cast(settings["temperature"], "float32")
    scaled = logits / ops.maximum(temperature, 1e-6)[:, None]
    ordered, order = ops.top_k(scaled, k=vocab, sorted=True)  # (rows, vocab) descending
    rank = ops.arange(vocab)[None, :]
    # top-k: keep ranks below k and ties with the k-th logit (k = 0: every token)
    k = ops.cast(settings["top_k"], "int32")
    # cast back: with a Python int in it, `where` gives floatx on JAX (bfloat16: not an index)
    k = ops.cast(ops.where(k > 0, ops.minimum(k, vocab), vocab), "int32")
    kth = ops.take_along_axis(ordered, (k - 1)[:, None], axis=-1)  # (rows, 1)
    keep = ordered >= kth
    # top-p on what top-k kept: the smallest head whose mass reaches p, the crossing token kept;
    # the tail is summed from the smallest up, as `top_p_filter` does (no float32 saturation).
    probs = ops.softmax(ops.where(keep, ordered, NEG_INF), axis=-1)
    tail = ops.flip(ops.cumsum(ops.flip(probs, axis=-1), axis=-1), axis=-1)
    p = ops.cast(settings["top_p"], "float32")[:, None]
    nucleus = ops.logical_or(ops.logical_or(tail > 1.0 - p, rank == 0), p >= 1.0)
    cutoff = ops.min(ops.where(ops.logical_and(keep, nucleus), ordered, float("inf")), axis=-1,
                     keepdims=True)
    keep = ops.logical_and(keep, ordered >= cutoff)  # ties with the last kept token stay
    # min-p: p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
    min_p = ops.cast(settings["min_p"], "float32")[:, None]
    floor = ordered[:, :1] + ops.log(ops.maximum(min_p, 1e-30))
    keep = ops.logical_and(keep, ops.logical_or(ordered >= floor, min_p <= 0.0))
    # inverse CDF over the kept, sorted tokens with the row's own uniform number
    probs = ops.softmax(ops.where(keep, ordered, NEG_INF), axis=-1)
    cdf = ops.cumsum(probs, axis=-1)
    u = ops.cast(settings["u"], "float32")[:, None] * cdf[:, -1:]
    # A float64 uniform above 1 - 2**-25 is 1.0 in float32, and then every cdf entry is <= u:
    # stop at the first token where the cdf reaches its total, the last one that adds any mass
    # (dropped tokens add none, so it is a kept one; the least likely may have probability 0).
    last = ops.sum(ops.cast(cdf < cdf[:, -1:], "int32"), axis=-1, keepdims=True)  # (rows, 1)
    index = ops.minimum(ops.sum(ops.cast(cdf <= u, "int32"), axis=-1, keepdims=True), last)
    drawn = ops.take_along_axis(order, index, axis=-1)[:, 0]
    greedy = ops.argmax(logits, axis=-1)
    token = ops.cast(ops.where(temperature <= 0.0, greedy, drawn), "int32")
    picked = ops.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
    top_logps, top_ids = ops.top_k(logp, k=min(top_n, vocab), sorted=True)
    return token, picked, ops.cast(top_ids, "int32"), top_logps
