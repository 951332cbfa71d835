"""The one place that knows the Keras backend.

Everything backend-specific in kzoo goes through these functions: compiling the decode loops,
the gradients of a custom train step, the int8 product of the generation weights. The rest of
kzoo is written once with `keras.ops`; each backend has one small module here
(`tensorflow.py`, `jax.py`, `torch.py`), imported on first use, so `import kzoo` on JAX or
PyTorch never imports TensorFlow.

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

import functools
import importlib

import keras

_SUPPORTED = ("tensorflow", "jax", "torch")


def name() -> str:
    """The Keras backend in use: "tensorflow", "jax", "torch" or "numpy"."""
    return keras.backend.backend()


@functools.cache
def _backend_module(backend: str):
    return importlib.import_module(f"kzoo.backend.{backend}") if backend in _SUPPORTED else None


def _module(feature: str):
    backend = name()
    module = _backend_module(backend)
    if module is None or not hasattr(module, feature):
        raise NotImplementedError(
            f"kzoo's {feature} is not available on the Keras backend {backend!r}. Set "
            "KERAS_BACKEND to tensorflow, jax or torch before importing Keras.")
    return getattr(module, feature)


def compile_function(fn, variables=list, jit_compile=True, on_trace=None):
    """`fn` compiled for the backend: one program per input signature, reused across calls.

    TensorFlow: `tf.function` (XLA when `jit_compile`); JAX: `jax.jit` with the values of
    `variables()` passed in (a `keras.StatelessScope` maps them, so the program reads the
    current weights, never stale constants); PyTorch: eager under `torch.no_grad()`.
    `fn` must not assign to Keras variables: return what changes instead.

    Args:
        fn: callable. takes and returns tensors (nested tuples of them).
        variables: callable. returns the Keras variables `fn` reads (called once, at the
            first call, when the model is built).
        jit_compile: bool. XLA on TensorFlow and JAX; False gives plain graphs / eager JAX.
        on_trace: callable or None. called each time a new program is traced (TensorFlow,
            JAX), or once at the first call on PyTorch, which traces nothing: a counter of
            it shows whether calls of one shape reuse their program.

    Example:
    ```python
    from keras import ops
    from kzoo import backend
    from kzoo.models import CausalLM
    model = CausalLM.from_preset("gpt_nano", vocab_size=256)
    logits = backend.compile_function(lambda ids: model(ids), lambda: model.variables)
    logits(ops.convert_to_tensor([[1, 2, 3]]))  # (1, 3, 256)
    ```
    """
    return _module("compile_function")(fn, variables, jit_compile, on_trace or _nothing)


def _nothing():
    pass


def counting(fn, on_trace):
    """`fn` calling `on_trace()` first: inside a traced program it runs once per trace."""
    def traced(*args):
        on_trace()
        return fn(*args)

    return traced


def matmul_transposed(x, kernel, int_accumulate=False):
    """`x @ kernel.T` for x (rows, in) and kernel (out, in); int8 inputs with
    `int_accumulate=True` give the int32 (TensorFlow, JAX) or exact float32 (PyTorch) sums."""
    return _module("matmul_transposed")(x, kernel, int_accumulate)


def apply_gradients(optimizer, compute_loss, variables):
    """Differentiate `compute_loss()` with respect to `variables` and apply `optimizer`.

    TensorFlow: a `GradientTape`; PyTorch: autograd; JAX: `jax.value_and_grad` of the values
    the enclosing `stateful_step` maps (assignments inside `compute_loss`, such as dropout seed
    updates, are carried out of the gradient and kept).

    Args:
        optimizer: keras.optimizers.Optimizer. built for `variables`.
        compute_loss: callable. takes no argument, returns `(loss, aux)`: a scalar loss and
            anything else the step wants back (metric values), computed with `keras.ops`.
        variables: list[keras.Variable]. the trainable variables.

    Returns:
        (loss, aux) as `compute_loss` returned them (aux with gradients stopped).
    """
    return _module("apply_gradients")(optimizer, compute_loss, variables)


def stateful_step(step):
    """Decorator: a Keras model's `train_step(self, data)` or `test_step(self, data)`, written
    once with `keras.ops`, `apply_gradients` and metric trackers, runs on every backend.

    TensorFlow and PyTorch call it as written. On JAX, Keras calls `step(self, state, data)`
    (jitted) and wants `(logs, new_state)`: the body then runs in a `keras.StatelessScope`
    mapping every variable of the state to its value, and the variables' values at the end are
    the new state (the optimizer's and trackers' assignments are recorded there).

    Args:
        step: callable. `(self, data) -> logs`, a method of a `keras.Model`.

    Example:
    ```python
    class Model(keras.Model):
        @backend.stateful_step
        def train_step(self, data):
            loss, _ = backend.apply_gradients(
                self.optimizer, lambda: (self.my_loss(data), {}), self.trainable_variables)
            self.tracker.update_state(loss)
            return {"loss": self.tracker.result()}
    ```
    """
    return _module("stateful_step")(step) if name() == "jax" else step


def replica_sum(x):
    """`x` summed over the replicas of a `tf.distribute` strategy; `x` itself with one replica,
    and on JAX and PyTorch, whose programs see the global batch (or are one process per device).

    Args:
        x: tensor. this replica's value (a scalar count or sum).

    Example: `tokens = backend.replica_sum(ops.sum(mask))` (the global batch's count).
    """
    return _module("replica_sum")(x)


def replica_mean(x):
    """`x` averaged over the replicas of a `tf.distribute` strategy (see `replica_sum`).

    Args:
        x: tensor. this replica's value.

    Example: `kl = backend.replica_mean(ops.mean(log_ratio))`.
    """
    return _module("replica_mean")(x)


def average_loss(per_example):
    """The loss of a step from per-example losses (batch,): this replica's sum / the global batch
    under `tf.distribute` (`tf.nn.compute_average_loss`, so the replicas' gradients add up to one
    device's on the whole batch), the plain mean elsewhere.

    Args:
        per_example: float tensor (batch,). this replica's per-example losses.

    Example: `loss = backend.average_loss(per_pair)`.
    """
    return _module("average_loss")(per_example)


def control_dependencies(tensors):
    """Context manager: on TensorFlow, ops made inside run after `tensors`
    (`tf.control_dependencies`), to keep two passes' activations from living at once; nothing on
    JAX (XLA schedules) and PyTorch (eager).

    Args:
        tensors: list of tensors. what must be computed first.

    Example: `with backend.control_dependencies([reference_logps]): logps = policy(ids)`.
    """
    return _module("control_dependencies")(tensors)


__all__ = ["apply_gradients", "average_loss", "compile_function", "control_dependencies",
           "matmul_transposed", "name", "replica_mean", "replica_sum", "stateful_step"]
