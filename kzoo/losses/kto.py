"""KTO-family losses for unpaired feedback (a thumbs up or down per completion), as small pure
functions in their own registry (their inputs differ from the paired DPO losses').

Every loss takes, for each completion of the batch, its policy-minus-reference log-ratio, its
label (True: desirable, False: undesirable) and the batch's KL reference point, and returns one
loss per completion:

    logratios = log pi(y | x) - log pi_ref(y | x)          # (batch,)
    kl        = max(0, mean(log pi(y' | x) - log pi_ref(y' | x)))   # scalar, no gradient

where the (x, y') are mismatched pairs: the batch's completions paired with other prompts
(`kzoo.data.unpaired.with_kl_rows`).

| name                | desirable loss    | undesirable loss  | paper                    |
| ------------------- | ----------------- | ----------------- | ------------------------ |
| `kto`               | 1 - s(b (r - kl)) | 1 - s(b (kl - r)) | KTO (Ethayarajh 2024)    |
| `apo_zero_unpaired` | 1 - s(b r)        | s(b r)            | APO (D'Oosterlinck 2024) |

`s` is the logistic sigmoid, `b` is `beta` and `r` the log-ratio. `kto_loss` multiplies each
desirable loss by `desirable_weight` and each undesirable one by `undesirable_weight`; the batch
loss is the mean over all completions, as in TRL's `KTOTrainer`. Arithmetic is float32.

Example:
```python
import numpy as np
from kzoo.losses import kto_loss
kto_loss(np.zeros(2), np.array([True, False]), kl=0.0, beta=0.1)   # [0.5, 0.5]
```
"""

from collections.abc import Callable

from keras import ops

UnpairedLoss = Callable[..., object]

_REGISTRY: dict[str, UnpairedLoss] = {}
# Losses that use the batch KL reference point (the others need no mismatched rows).
_USES_KL: set[str] = set()


def register_unpaired(name: str, uses_kl: bool = True):
    """Decorator adding an unpaired loss `fn(logratios, labels, kl, beta)` under `name`.

    Args:
        name: str. the registry name.
        uses_kl: bool. the loss reads the KL reference point, so batches need KL rows.

    Example:
    ```python
    from kzoo.losses.kto import register_unpaired
    @register_unpaired("my_unpaired", uses_kl=False)
    def my_loss(logratios, labels, kl, beta):
        ...
    ```
    """

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"An unpaired loss named {name!r} is already registered.")
        _REGISTRY[name] = fn
        if uses_kl:
            _USES_KL.add(name)
        return fn

    return wrap


def _inputs(logratios, labels):
    return ops.cast(logratios, "float32"), ops.cast(labels, "bool")


@register_unpaired("kto")
def kto_unweighted(logratios, labels, kl, beta: float = 0.1):
    """KTO's loss (Eq. 7 of the paper): the sigmoid of the log-ratio's distance to the KL point.

    Args:
        logratios: float tensor. (batch,) log pi(y|x) - log pi_ref(y|x) of each completion.
        labels: bool tensor. (batch,) True for a desirable completion.
        kl: float scalar. the batch KL reference point (`kto_kl`).
        beta: float. the KL strength.

    Returns:
        float32 tensor (batch,), unweighted.

    Example:
    ```python
    from kzoo.losses.kto import kto_unweighted
    kto_unweighted([1.0], [True], 0.0, beta=1.0)   # [1 - sigmoid(1)] = [0.2689]
    ```
    """
    logratios, labels = _inputs(logratios, labels)
    kl = ops.cast(kl, "float32")
    # A desirable completion should rise above the reference point, an undesirable one fall
    # below it: both are 1 - s(b * signed distance).
    distance = ops.where(labels, logratios - kl, kl - logratios)
    return 1.0 - ops.sigmoid(beta * distance)


@register_unpaired("apo_zero_unpaired", uses_kl=False)
def apo_zero_unpaired(logratios, labels, kl=0.0, beta: float = 0.1):
    """APO-zero, unpaired: push desirable likelihoods up and undesirable ones down, no KL point.

    Args:
        logratios: float tensor. (batch,) log pi(y|x) - log pi_ref(y|x).
        labels: bool tensor. (batch,) True for a desirable completion.
        kl: ignored (the loss has no reference point).
        beta: float. the scale of the log-ratio.

    Returns:
        float32 tensor (batch,), unweighted.

    Example:
    ```python
    from kzoo.losses.kto import apo_zero_unpaired
    apo_zero_unpaired([0.0, 0.0], [True, False], beta=1.0)   # [0.5, 0.5]
    ```
    """
    logratios, labels = _inputs(logratios, labels)
    scaled = ops.sigmoid(beta * logratios)
    return ops.where(labels, 1.0 - scaled, scaled)


def kto_kl(policy_kl_logps, reference_kl_logps):
    """The batch KL reference point: the mean log-ratio of the mismatched (KL) rows, at least 0,
    with no gradient (KTO treats it as a constant of the step).

    Args:
        policy_kl_logps: float tensor. (batch,) log pi(y'|x) of the mismatched rows.
        reference_kl_logps: float tensor. (batch,) log pi_ref(y'|x) of the same rows.

    Returns:
        float32 scalar.

    Example:
    ```python
    from kzoo.losses import kto_kl
    kto_kl([-1.0, -3.0], [-2.0, -2.0]), kto_kl([-3.0], [-1.0])   # 0.0 and 0.0 (clamped)
    ```
    """
    diff = ops.cast(policy_kl_logps, "float32") - ops.cast(reference_kl_logps, "float32")
    return ops.stop_gradient(ops.relu(ops.mean(diff)))


def kto_loss(logratios, labels, kl, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0, loss_type: str = "kto"):
    """One weighted loss per completion; their mean is the batch loss (TRL's `KTOTrainer`).

    Args:
        logratios: float tensor. (batch,) log pi(y|x) - log pi_ref(y|x).
        labels: bool tensor. (batch,) True for desirable (thumbs up), False for undesirable.
        kl: float scalar. the KL reference point (`kto_kl`); ignored by `apo_zero_unpaired`.
        beta: float. the KL strength, > 0.
        desirable_weight: float. weight of each desirable completion's loss, > 0.
        undesirable_weight: float. weight of each undesirable completion's loss, > 0.
        loss_type: str. a name from `list_unpaired_losses()`.

    Returns:
        float32 tensor (batch,).

    Example:
    ```python
    from kzoo.losses import kto_loss
    kto_loss([0.5, -0.5], [True, False], kl=0.1, beta=0.1, undesirable_weight=1.33)
    ```
    """
    fn = get_unpaired(loss_type)
    for name, value in (("beta", beta), ("desirable_weight", desirable_weight),
                        ("undesirable_weight", undesirable_weight)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
    labels = ops.cast(labels, "bool")
    # float32 tensors, not Python floats: those become the default float (floatx), and a
    # float16/bfloat16 weight would round 1.33 and fail to multiply a float32 loss on TF.
    weights = ops.where(labels, ops.convert_to_tensor(float(desirable_weight), "float32"),
                        ops.convert_to_tensor(float(undesirable_weight), "float32"))
    return weights * fn(logratios, labels, kl, float(beta))


def weight_advice(num_desirable: int, num_undesirable: int, desirable_weight: float = 1.0,
                  undesirable_weight: float = 1.0) -> str | None:
    """A warning when the weights do not balance unequal label counts, else None.

    The KTO paper (Eq. 8) advises desirable_weight * n_desirable / (undesirable_weight *
    n_undesirable) in [1, 4/3]; the ranges of either weight that meet it are named (TRL warns
    the same way). With no example of one kind, the message says so.

    Example:
    ```python
    from kzoo.losses.kto import weight_advice
    weight_advice(100, 300)   # '... desirable_weight in [3, 4] or undesirable_weight in ...'
    ```
    """
    if not num_desirable or not num_undesirable:
        kind = "desirable" if not num_desirable else "undesirable"
        return (f"no {kind} examples ({num_desirable} desirable, {num_undesirable} undesirable): "
                f"KTO still trains, but has no {kind} completion to learn from")
    if num_desirable == num_undesirable:
        return None
    ratio = desirable_weight * num_desirable / (undesirable_weight * num_undesirable)
    if 1.0 <= ratio <= 4.0 / 3.0:
        return None
    des = num_undesirable * undesirable_weight / num_desirable
    und = num_desirable * desirable_weight / num_undesirable
    return (f"{num_desirable} desirable vs {num_undesirable} undesirable examples: set EITHER "
            f"desirable_weight in [{des:.3g}, {des * 4 / 3:.3g}] or undesirable_weight in "
            f"[{und * 3 / 4:.3g}, {und:.3g}] (KTO paper, Eq. 8)")


def get_unpaired(name: str) -> UnpairedLoss:
    """Return the unpaired loss registered as `name`.

    Example:
    ```python
    from kzoo.losses import get_unpaired
    get_unpaired("kto")
    ```
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown unpaired (KTO) loss: {name!r}. Valid names: "
                         f"{sorted(_REGISTRY)}")
    return _REGISTRY[name]


def list_unpaired_losses() -> list[str]:
    """Names of the registered unpaired losses, sorted: ['apo_zero_unpaired', 'kto']."""
    return sorted(_REGISTRY)


def uses_kl(name: str) -> bool:
    """Whether the unpaired loss `name` reads the batch KL reference point (True for `kto`).

    Example:
    ```python
    from kzoo.losses.kto import uses_kl
    uses_kl("kto"), uses_kl("apo_zero_unpaired")   # (True, False)
    ```
    """
    get_unpaired(name)
    return name in _USES_KL
