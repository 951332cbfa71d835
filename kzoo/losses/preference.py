"""Preference losses (DPO family) as small pure functions in a registry.

Every loss takes the policy-minus-reference log-ratios of the chosen and of the rejected responses
and returns one loss per pair:

    chosen_logratios   = log pi(y_w | x) - log pi_ref(y_w | x)      # (batch,)
    rejected_logratios = log pi(y_l | x) - log pi_ref(y_l | x)      # (batch,)
    h = chosen_logratios - rejected_logratios

| name           | loss per pair                                     | paper                 |
| -------------- | ------------------------------------------------- | --------------------- |
| `sigmoid`      | -(1-e) log s(b h) - e log s(-b h)                 | DPO (Rafailov 2023)   |
| `conservative` | same as `sigmoid`; `e` is the label-noise rate    | cDPO (Mitchell 2023)  |
| `robust`       | (-(1-e) log s(b h) + e log s(-b h)) / (1 - 2e)    | rDPO (Chowdhury 2024) |
| `ipo`          | (h - 1 / (2 b))^2, h of per-token mean log-ratios | IPO (Azar 2023)       |
| `hinge`        | max(0, 1 - b h)                                   | SLiC (Zhao 2023)      |

`s` is the logistic sigmoid, `b` is `beta` and `e` is `label_smoothing`. All arithmetic is done in
float32 whatever the inputs' dtype, so that the loss is exact under mixed precision.

A loss registered with `length_normalized=True` (`ipo`) is defined on per-token mean log-ratios
(each response's log-ratio divided by its number of tokens), as in the IPO paper and TRL;
`length_normalized(name)` says so, and `kzoo.alignment.dpo.DPOModel` then feeds it those whatever
its `average_log_prob`. The others take the log-ratios as given (summed, by default).

Example:
```python
import numpy as np
from kzoo import losses
loss_fn = losses.get("sigmoid")
loss_fn(np.zeros(2), np.zeros(2), beta=0.1)   # [ln 2, ln 2]
```
"""

from collections.abc import Callable

from keras import ops

PreferenceLoss = Callable[..., object]

_REGISTRY: dict[str, PreferenceLoss] = {}
# Names of the losses defined on per-token mean log-ratios.
_LENGTH_NORMALIZED: set[str] = set()


def register(name: str, length_normalized: bool = False):
    """Decorator adding a loss function to the registry under `name`.

    Args:
        name: str. the registry name.
        length_normalized: bool. the loss is defined on per-token mean log-ratios, so callers
            must divide each response's log-ratio by its number of tokens before calling it.
    """

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"A preference loss named {name!r} is already registered.")
        _REGISTRY[name] = fn
        if length_normalized:
            _LENGTH_NORMALIZED.add(name)
        return fn

    return wrap


def _h(chosen_logratios, rejected_logratios):
    return ops.cast(chosen_logratios, "float32") - ops.cast(rejected_logratios, "float32")


def _check_smoothing(label_smoothing: float, upper_inclusive: bool) -> float:
    ok = 0.0 <= label_smoothing <= 0.5 if upper_inclusive else 0.0 <= label_smoothing < 0.5
    if not ok:
        bound = "[0, 0.5]" if upper_inclusive else "[0, 0.5)"
        raise ValueError(
            f"`label_smoothing` must be in {bound}. Received: label_smoothing={label_smoothing!r}"
        )
    return float(label_smoothing)


def _no_smoothing(name: str, label_smoothing: float) -> None:
    if label_smoothing:
        raise ValueError(
            f"The `{name}` loss takes no `label_smoothing`. "
            f"Received: label_smoothing={label_smoothing}"
        )


@register("sigmoid")
def sigmoid_loss(chosen_logratios, rejected_logratios, beta: float = 0.1,
                 label_smoothing: float = 0.0):
    """DPO's logistic loss; with `label_smoothing > 0` it is conservative DPO (cDPO).

    Args:
        chosen_logratios: float tensor. (batch,) log pi(chosen) - log pi_ref(chosen).
        rejected_logratios: float tensor. (batch,) log pi(rejected) - log pi_ref(rejected).
        beta: float. strength of the implicit KL penalty; larger keeps closer to the reference.
        label_smoothing: float. assumed probability that a pair's labels are flipped, in [0, 0.5].

    Returns:
        float32 tensor (batch,): the loss of each pair.

    Example:
    ```python
    from kzoo.losses import sigmoid_loss
    sigmoid_loss([1.0], [0.0], beta=1.0)   # [-log(sigmoid(1))] = [0.3133]
    ```
    """
    eps = _check_smoothing(label_smoothing, True)
    logits = beta * _h(chosen_logratios, rejected_logratios)
    # log_sigmoid is the numerically stable -softplus(-x).
    return -(1.0 - eps) * ops.log_sigmoid(logits) - eps * ops.log_sigmoid(-logits)


# cDPO is exactly the label-smoothed sigmoid loss; the alias makes configs say what they mean.
register("conservative")(sigmoid_loss)


@register("robust")
def robust_loss(chosen_logratios, rejected_logratios, beta: float = 0.1,
                label_smoothing: float = 0.0):
    """Robust DPO (rDPO): an unbiased estimate of the clean DPO loss under label noise `e`.

    Args:
        chosen_logratios: float tensor. (batch,) log pi(chosen) - log pi_ref(chosen).
        rejected_logratios: float tensor. (batch,) log pi(rejected) - log pi_ref(rejected).
        beta: float. strength of the implicit KL penalty.
        label_smoothing: float. label-flip rate `e`, in [0, 0.5).

    Returns:
        float32 tensor (batch,): the loss of each pair.

    Example:
    ```python
    from kzoo.losses import robust_loss
    robust_loss([1.0], [0.0], beta=1.0, label_smoothing=0.1)
    ```
    """
    eps = _check_smoothing(label_smoothing, False)
    logits = beta * _h(chosen_logratios, rejected_logratios)
    return (-(1.0 - eps) * ops.log_sigmoid(logits) + eps * ops.log_sigmoid(-logits)) / (
        1.0 - 2.0 * eps
    )


# The IPO paper's target gap 1/(2 beta) is per token (TRL divides by the response lengths too);
# on summed log-ratios the gap grows with the length and the loss by orders of magnitude.
@register("ipo", length_normalized=True)
def ipo_loss(chosen_logratios, rejected_logratios, beta: float = 0.1,
             label_smoothing: float = 0.0):
    """IPO: squared distance of the per-token log-ratio gap to `1 / (2 beta)`.

    Args:
        chosen_logratios: float tensor. (batch,) log pi(chosen) - log pi_ref(chosen), averaged
            over the chosen response's tokens (the loss is registered `length_normalized`).
        rejected_logratios: float tensor. (batch,) the same for the rejected response.
        beta: float. the regularisation strength (`tau` in the paper); the target gap is 1/(2 beta).
        label_smoothing: float. must be 0 (IPO has no label-noise form).

    Returns:
        float32 tensor (batch,): the loss of each pair.

    Example:
    ```python
    from kzoo.losses import ipo_loss
    ipo_loss([1.0], [0.0], beta=0.5)   # (1 - 1)^2 = [0.0]
    ```
    """
    _no_smoothing("ipo", label_smoothing)
    return ops.square(_h(chosen_logratios, rejected_logratios) - 1.0 / (2.0 * beta))


@register("hinge")
def hinge_loss(chosen_logratios, rejected_logratios, beta: float = 0.1,
               label_smoothing: float = 0.0):
    """SLiC's hinge loss on the scaled log-ratio gap.

    Args:
        chosen_logratios: float tensor. (batch,) log pi(chosen) - log pi_ref(chosen).
        rejected_logratios: float tensor. (batch,) log pi(rejected) - log pi_ref(rejected).
        beta: float. scale of the gap; the margin is reached at a gap of 1 / beta.
        label_smoothing: float. must be 0.

    Returns:
        float32 tensor (batch,): the loss of each pair.

    Example:
    ```python
    from kzoo.losses import hinge_loss
    hinge_loss([0.5], [0.0], beta=1.0)   # [0.5]
    ```
    """
    _no_smoothing("hinge", label_smoothing)
    return ops.relu(1.0 - beta * _h(chosen_logratios, rejected_logratios))


def get(name: str) -> PreferenceLoss:
    """Return the preference loss registered as `name`.

    Example:
    ```python
    from kzoo import losses
    losses.get("ipo")
    ```
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown preference loss: {name!r}. Valid names: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def list_losses() -> list[str]:
    """Names of the registered preference losses, sorted."""
    return sorted(_REGISTRY)


def length_normalized(name: str) -> bool:
    """Whether the loss `name` is defined on per-token mean log-ratios (True for `ipo`).

    Example:
    ```python
    from kzoo import losses
    losses.length_normalized("ipo"), losses.length_normalized("sigmoid")   # (True, False)
    ```
    """
    get(name)  # an unknown name is an error, not False
    return name in _LENGTH_NORMALIZED
