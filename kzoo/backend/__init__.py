"""The one place that knows the Keras backend.

Everything backend-specific that kzoo's custom train steps need goes through these functions,
so a train step is written once with `keras.ops` and runs wherever its backend module exists.
Today: TensorFlow and PyTorch (`apply_gradients`); JAX needs stateless train steps, which come
with the backend issue.

Example:
```python
from kzoo import backend
def train_step(self, data):
    loss, logs = backend.apply_gradients(
        self.optimizer, lambda: self.compute_loss_and_logs(data), self.trainable_variables)
    return logs
```
"""

from __future__ import annotations

import importlib

import keras

_SUPPORTED = ("tensorflow", "torch")


def name() -> str:
    """The Keras backend in use: "tensorflow", "jax", "torch" or "numpy"."""
    return keras.backend.backend()


def _module():
    backend = name()
    if backend not in _SUPPORTED:
        raise NotImplementedError(
            f"kzoo's custom train steps run on {', '.join(_SUPPORTED)}; the Keras backend is "
            f"{backend!r}. Set KERAS_BACKEND=tensorflow (or torch) before importing Keras.")
    return importlib.import_module(f"kzoo.backend.{backend}")


def apply_gradients(optimizer, compute_loss, variables):
    """Differentiate `compute_loss()` with respect to `variables` and apply `optimizer`.

    Args:
        optimizer: keras.optimizers.Optimizer. built for `variables`.
        compute_loss: callable. takes no argument, returns `(loss, aux)`: a scalar loss and
            anything else the step wants back (metric values), computed with `keras.ops`.
        variables: list[keras.Variable]. the trainable variables.

    Returns:
        (loss, aux) as `compute_loss` returned them (aux with gradients stopped).
    """
    return _module().apply_gradients(optimizer, compute_loss, variables)


__all__ = ["apply_gradients", "name"]
