"""ORPO's odds-ratio loss (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without
Reference Model"): preference tuning with no reference model.

The odds of a response are p / (1 - p), with p the exponent of its per-token mean log-prob. The
loss of a pair is -beta * log sigmoid(log odds(chosen) - log odds(rejected)); `ORPOModel` adds it
to the policy's NLL of the chosen rows, as TRL's `ORPOTrainer` does (its `beta` is the paper's
lambda).

It takes the policy's own log-probs, not policy-minus-reference log-ratios, so it is not one of
the DPO-family losses of `kzoo.losses.get` (a `DPOModel` would feed it log-ratios).

Example:
```python
import numpy as np
from kzoo.losses import odds_ratio_loss
odds_ratio_loss(np.log([0.5]), np.log([0.5]), beta=1.0)   # equal odds: [ln 2] = [0.6931]
```
"""

import math

from keras import ops

# A per-token mean log-prob of exactly 0 (every token certain) has infinite odds, and the
# gradient of log(1 - p) there is NaN; capping it a hair below 0 keeps the step finite and
# changes the loss only for p > 0.999999.
_MAX_LOGP = -1e-6


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, without cancellation at either end.

    Args:
        x: float tensor. negative values (log-probs).

    Returns:
        float32 tensor of the same shape.

    Example:
    ```python
    from kzoo.losses.orpo import log1mexp
    log1mexp([-0.6931472])   # log(1 - 0.5) = [-0.6931472]
    ```
    """
    x = ops.cast(x, "float32")
    # Near 0, 1 - exp(x) cancels: -expm1(x) does not; far below, log1p(-exp(x)) is exact.
    return ops.where(x < -math.log(2.0), ops.log1p(-ops.exp(x)), ops.log(-ops.expm1(x)))


def log_odds_ratio(chosen_logps, rejected_logps):
    """log odds(chosen) - log odds(rejected), from per-token mean log-probs: (batch,) float32.

    Args:
        chosen_logps: float tensor. (batch,) the chosen responses' per-token mean log-probs.
        rejected_logps: float tensor. (batch,) the rejected responses'.

    Example:
    ```python
    from kzoo.losses.orpo import log_odds_ratio
    log_odds_ratio([-0.1], [-1.0])   # about 2.80: the chosen response is far likelier
    ```
    """
    chosen = ops.minimum(ops.cast(chosen_logps, "float32"), _MAX_LOGP)
    rejected = ops.minimum(ops.cast(rejected_logps, "float32"), _MAX_LOGP)
    # log(p / (1 - p)) = log p - log(1 - p), with log p given.
    return (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))


def odds_ratio_loss(chosen_logps, rejected_logps, beta: float = 0.1):
    """ORPO's odds-ratio term per pair: -beta * log sigmoid(log odds ratio).

    Args:
        chosen_logps: float tensor. (batch,) per-token mean log-probs of the chosen responses
            under the policy (no reference).
        rejected_logps: float tensor. (batch,) the same for the rejected responses.
        beta: float. the weight of the term against the NLL (the paper's lambda, TRL's beta).

    Returns:
        float32 tensor (batch,): the loss of each pair, >= 0.

    Example:
    ```python
    from kzoo.losses import odds_ratio_loss
    odds_ratio_loss([-0.1], [-1.0], beta=0.1)   # about 0.0059
    ```
    """
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not beta > 0:
        raise ValueError(f"`beta` must be a positive number. Received: beta={beta!r}")
    return -beta * ops.log_sigmoid(log_odds_ratio(chosen_logps, rejected_logps))


__all__ = ["log1mexp", "log_odds_ratio", "odds_ratio_loss"]
