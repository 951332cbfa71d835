"""Sampling as small pure functions on logits.

Every filter maps float logits (batch, vocab) to logits of the same shape in which the tokens it
rules out are set to a very negative number, so filters chain in any order and the final draw
(`argmax` or a categorical draw) never picks a removed token. The sampler layers in
`kzoo.samplers` are thin wrappers that call these functions in a fixed order:
penalties -> temperature -> top-k -> top-p -> min-p -> draw.

Example:
```python
import numpy as np
from kzoo.samplers import functional as F
logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], "float32"))
kept = F.top_p_filter(F.top_k_filter(logits, 3), 0.7)   # keeps tokens 0 and 1
```
"""

import math

from keras import ops, random

# Large but finite: -inf would turn `0 * -inf` into NaN in the probability maths of callers.
NEG_INF = -1e9


def _checked_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer (k > 0). Received: {name}={value!r}")
    return value


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}")
    return float(value)


def check_temperature(temperature) -> float:
    """Validate a temperature: a number >= 0 (0 means greedy)."""
    temperature = _number("temperature", temperature)
    if temperature < 0:
        raise ValueError(
            f"`temperature` must be >= 0 (0 means greedy). Received: temperature={temperature}"
        )
    return temperature


def check_top_k(k) -> int:
    """Validate a top-k cutoff: an integer > 0."""
    return _checked_positive_int("k", k)


def check_top_p(p) -> float:
    """Validate a nucleus mass: a number in (0, 1]."""
    p = _number("p", p)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"`p` must be in (0, 1]. Received: p={p}")
    return p


def check_min_p(p) -> float:
    """Validate a min-p ratio: a number in [0, 1]."""
    p = _number("min_p", p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`min_p` must be in [0, 1]. Received: min_p={p}")
    return p


def check_repetition_penalty(penalty) -> float:
    """Validate a repetition penalty: a number > 0 (1 means no penalty)."""
    penalty = _number("repetition_penalty", penalty)
    if penalty <= 0:
        raise ValueError(
            f"`repetition_penalty` must be > 0 (1.0 = off). Received: repetition_penalty={penalty}"
        )
    return penalty


def scale_temperature(logits, temperature: float):
    """Divide logits by `temperature` (> 0); higher flattens the distribution.

    Args:
        logits: float tensor. (batch, vocab) unnormalised scores.
        temperature: float. > 0.

    Example:
    ```python
    from kzoo.samplers.functional import scale_temperature
    scale_temperature([[2.0, 1.0]], 2.0)   # [[1.0, 0.5]]
    ```
    """
    return ops.cast(logits, "float32") / temperature


def top_k_filter(logits, k: int):
    """Keep the `k` highest logits of each row (ties with the k-th value are kept too).

    Args:
        logits: float tensor. (batch, vocab).
        k: int. how many tokens to keep; clipped to the vocabulary size.

    Example:
    ```python
    from kzoo.samplers.functional import top_k_filter
    top_k_filter([[0.1, 3.0, 2.0]], 2)   # [[-1e9, 3.0, 2.0]]
    ```
    """
    logits = ops.cast(logits, "float32")
    k = min(k, ops.shape(logits)[-1])
    kth = ops.top_k(logits, k=k, sorted=True)[0][:, -1:]  # (batch, 1) the k-th largest logit
    return ops.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits, p: float):
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches `p`.

    The token that crosses `p` is kept, so at least one token always survives; tokens tied
    with the last kept one are kept too. `p = 1` keeps every token.

    Args:
        logits: float tensor. (batch, vocab).
        p: float. probability mass to keep, in (0, 1].

    Example:
    ```python
    import numpy as np
    from kzoo.samplers.functional import top_p_filter
    top_p_filter(np.log([[0.6, 0.3, 0.1]]), 0.8)   # keeps the first two tokens
    ```
    """
    logits = ops.cast(logits, "float32")
    if p >= 1.0:  # the whole mass: no rounding may drop a token whose probability underflows
        return logits
    vocab = ops.shape(logits)[-1]
    sorted_logits = ops.top_k(logits, k=vocab, sorted=True)[0]  # (batch, vocab) descending
    sorted_probs = ops.softmax(sorted_logits, axis=-1)
    # "mass of the better tokens < p" is tested as "mass of this token and the worse ones > 1 - p":
    # summed from the smallest up, the tail keeps its tiny terms, whereas a float32 cumsum from
    # the top saturates near 1 and cuts tokens that the nucleus still needed.
    tail_mass = ops.flip(ops.cumsum(ops.flip(sorted_probs, axis=-1), axis=-1), axis=-1)
    first = ops.arange(vocab)[None, :] == 0  # the most likely token survives any rounding
    keep = ops.logical_or(tail_mass > 1.0 - p, first)  # (batch, vocab)
    # The smallest kept logit is the cutoff; everything below it goes.
    cutoff = ops.min(ops.where(keep, sorted_logits, float("inf")), axis=-1, keepdims=True)
    return ops.where(logits < cutoff, NEG_INF, logits)


def min_p_filter(logits, min_p: float):
    """Keep tokens whose probability is at least `min_p` times that of the most likely token.

    Args:
        logits: float tensor. (batch, vocab).
        min_p: float. ratio in [0, 1]; 0 keeps everything.

    Example:
    ```python
    import numpy as np
    from kzoo.samplers.functional import min_p_filter
    min_p_filter(np.log([[0.6, 0.3, 0.1]]), 0.25)   # drops 0.1 (< 0.25 * 0.6)
    ```
    """
    logits = ops.cast(logits, "float32")
    if min_p <= 0.0:  # log(0) has no finite threshold; any floor would drop the far tail
        return logits
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
    threshold = ops.max(logits, axis=-1, keepdims=True) + math.log(min_p)
    return ops.where(logits < threshold, NEG_INF, logits)


def repetition_penalty(logits, token_counts, penalty: float):
    """CTRL-style repetition penalty: seen tokens' positive logits / penalty, negative * penalty.

    Args:
        logits: float tensor. (batch, vocab).
        token_counts: float tensor. (batch, vocab) how often each token already occurs.
        penalty: float. > 0; 1 is a no-op, > 1 discourages repeats.

    Example:
    ```python
    from kzoo.samplers.functional import repetition_penalty
    repetition_penalty([[2.0, -1.0, 1.0]], [[1.0, 1.0, 0.0]], 2.0)   # [[1.0, -2.0, 1.0]]
    ```
    """
    logits = ops.cast(logits, "float32")
    seen = ops.cast(token_counts, "float32") > 0
    penalised = ops.where(logits > 0, logits / penalty, logits * penalty)
    return ops.where(seen, penalised, logits)


def frequency_penalty(logits, token_counts, penalty: float):
    """OpenAI-style frequency penalty: subtract `penalty * count` from each token's logit.

    Example:
    ```python
    from kzoo.samplers.functional import frequency_penalty
    frequency_penalty([[2.0, 1.0]], [[3.0, 0.0]], 0.5)   # [[0.5, 1.0]]
    ```
    """
    return ops.cast(logits, "float32") - penalty * ops.cast(token_counts, "float32")


def presence_penalty(logits, token_counts, penalty: float):
    """OpenAI-style presence penalty: subtract `penalty` once from every token already seen.

    Example:
    ```python
    from kzoo.samplers.functional import presence_penalty
    presence_penalty([[2.0, 1.0]], [[3.0, 0.0]], 0.5)   # [[1.5, 1.0]]
    ```
    """
    seen = ops.cast(ops.cast(token_counts, "float32") > 0, "float32")
    return ops.cast(logits, "float32") - penalty * seen


def greedy_draw(logits, seed=None):
    """The most likely token of each row: int32 (batch,). `seed` is ignored."""
    del seed
    return ops.cast(ops.argmax(logits, axis=-1), "int32")


def categorical_draw(logits, seed=None):
    """Draw one token per row from softmax(logits): int32 (batch,).

    Args:
        logits: float tensor. (batch, vocab); filtered tokens hold `NEG_INF`.
        seed: int, `keras.random.SeedGenerator` or None. randomness source.
    """
    draws = random.categorical(ops.cast(logits, "float32"), 1, seed=seed, dtype="int32")
    return ops.squeeze(draws, axis=-1)


def token_counts(token_ids, vocab_size: int, mask=None):
    """Count each token id per row: float32 (batch, vocab) from int ids (batch, seq).

    Args:
        token_ids: int tensor. (batch, seq).
        vocab_size: int. size of the count axis.
        mask: optional bool/int tensor. (batch, seq); only positions where it is true count.

    Example:
    ```python
    from kzoo.samplers.functional import token_counts
    token_counts([[1, 1, 2]], vocab_size=4)   # [[0., 2., 1., 0.]]
    ```
    """
    one_hot = ops.one_hot(ops.cast(token_ids, "int32"), vocab_size, dtype="float32")  # (b, s, v)
    if mask is not None:
        one_hot = one_hot * ops.cast(mask, "float32")[..., None]
    return ops.sum(one_hot, axis=1)
