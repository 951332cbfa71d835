"""Feed-forward activations as a registry of small pure functions.

Plain activations map `x -> f(x)`; gated ones (GLU family) map `(gate, up) -> f(gate) * up`.
"""

import keras
from keras import ops

from kzoo.layers._checks import one_of


def _gelu_tanh(x):
    # GPT-2's tanh approximation: parity with GPT-2 weights needs exactly this one.
    return keras.activations.gelu(x, approximate=True)


def _gelu(x):
    return keras.activations.gelu(x, approximate=False)


_PLAIN = {
    "gelu": _gelu_tanh,
    "gelu_exact": _gelu,
    "relu": keras.activations.relu,
    "silu": keras.activations.silu,
}

_GATED = {
    "swiglu": keras.activations.silu,
    "geglu": _gelu_tanh,
    "reglu": keras.activations.relu,
}


def list_activations() -> list[str]:
    """Names accepted by `FeedForward(activation=...)`.

    Example:
    ```python
    from kzoo.layers import list_activations
    assert "swiglu" in list_activations()
    ```
    """
    return sorted(_PLAIN) + sorted(_GATED)


def is_gated(name: str) -> bool:
    one_of("activation", name, list_activations())
    return name in _GATED


def get_activation(name: str):
    """Return the activation function for `name`.

    For gated names the returned function takes `(gate, up)` and computes in float32 so that
    bfloat16 training keeps SiLU's small negative tail.

    Args:
        name: str. One of `list_activations()`.

    Example:
    ```python
    import numpy as np
    from kzoo.layers import get_activation
    y = get_activation("gelu")(np.ones((2, 3), "float32"))
    ```
    """
    one_of("activation", name, list_activations())
    if name in _PLAIN:
        return _PLAIN[name]
    fn = _GATED[name]

    def gated(gate, up):
        out = fn(ops.cast(gate, "float32"))
        return ops.cast(out, up.dtype) * up

    return gated
