"""The one place that knows the Keras backend.

Everything backend-specific in kzoo goes through these functions: compiling the decode loops,
the gradients of a custom train step, the int8 product of the generation weights, the
distribution strategies and the checks of tensors (eager or traced). The rest of
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

from kzoo.backend.keras_strategy import KerasStrategy  # what `distribution` gives off TensorFlow

_SUPPORTED = ("tensorflow", "jax", "torch")


def name() -> str:
    """The Keras backend in use: "tensorflow", "jax", "torch" or "numpy"."""
    return keras.backend.backend()


@functools.cache
def _backend_module(backend: str):
    return importlib.import_module(f"kzoo.backend.{backend}") if backend in _SUPPORTED else None


def _module(feature: str, default=None):
    backend = name()
    module = _backend_module(backend)
    if module is None or not hasattr(module, feature):
        if default is not None:
            return default
        raise NotImplementedError(
            f"kzoo's {feature} is not available on the Keras backend {backend!r}. Set "
            "KERAS_BACKEND to tensorflow, jax or torch before importing Keras.")
    return getattr(module, feature)


def compile_function(fn, variables=list, jit_compile=True, on_trace=None, donate=()):
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
        donate: tuple of int. positions of arguments whose buffers the program may reuse for
            its outputs (JAX `donate_argnums`: a KV cache updated in place instead of copied
            each call; the caller must not read those arguments afterwards). Ignored elsewhere.

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
    extra = {"donate": tuple(donate)} if donate and name() == "jax" else {}
    return _module("compile_function")(fn, variables, jit_compile, on_trace or _nothing, **extra)


def _nothing():
    pass


def compile_step(fn, variables=list):
    """One step of a loop that runs eagerly, captured as a program: on PyTorch, whose decode
    loops are Python loops, `fn` is traced once per input signature into a graph of ATen ops
    (shapes, layouts, dtypes and Python constants of the arguments) and replayed without the
    Python of Keras' layers and ops; `variables()` are inputs of that graph, so it reads their
    current values, and each call returns tensors of its own. A step that reads a tensor's value
    in Python, or closes over a tensor that is neither an argument nor one of `variables()`,
    runs eagerly instead. On TensorFlow and JAX, which compile the whole loop, it is `fn`.

    Args:
        fn: callable. takes nested tuples/dicts of tensors and Python constants, returns
            tensors; it may write into its tensor arguments (`update_slice`).
        variables: callable. returns the Keras variables `fn` reads.

    Example:
    ```python
    from keras import ops
    from kzoo import backend
    from kzoo.models import CausalLM
    model = CausalLM.from_preset("gpt_nano", vocab_size=256)
    step = backend.compile_step(lambda ids: model(ids), lambda: model.variables)
    step(ops.convert_to_tensor([[1, 2, 3]]))  # (1, 3, 256); traced on PyTorch
    ```
    """
    return _module("compile_step", _uncompiled_step)(fn, variables)


def _uncompiled_step(fn, variables):
    return fn


def matmul_transposed(x, kernel, int_accumulate=False):
    """`x @ kernel.T` for x (..., in) and kernel (out, in); int8 inputs with
    `int_accumulate=True` give the int32 (TensorFlow, JAX) or exact float32 (PyTorch) sums."""
    return _module("matmul_transposed")(x, kernel, int_accumulate)


def update_slice(x, start_indices, updates):
    """`keras.ops.slice_update`, in place on PyTorch inside a `compile_function` program.

    Keras' torch `slice_update` copies the whole tensor first; a decode loop updates its KV
    cache every token, so that copy is the size of the cache per layer and token. The loops
    own their caches, so inside their programs PyTorch writes the slice in place; everywhere
    else (and on TensorFlow and JAX, where XLA updates in place) it is `ops.slice_update`.

    Example:
    ```python
    import numpy as np
    from kzoo import backend
    backend.update_slice(np.zeros((2, 4)), [0, 1], np.ones((2, 1)))  # column 1 set to 1
    ```
    """
    # TensorFlow and JAX (XLA updates in place) and any other backend: Keras' own.
    return _module("update_slice", keras.ops.slice_update)(x, start_indices, updates)


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


def train_jit_compile(jit_compile: bool) -> bool:
    """The `jit_compile` for `model.compile` when a config asks for `jit_compile`: itself on
    TensorFlow and JAX (XLA), False on PyTorch (Keras' `torch.compile` re-traces the step per
    layer; kzoo compiles it itself there: `compile_train_step`).

    Args:
        jit_compile: bool. what the config asks for.

    Example: `model.compile(optimizer="adamw", jit_compile=backend.train_jit_compile(True))`.
    """
    return _module("train_jit_compile")(jit_compile)


def compile_train_step(model, jit_compile=True) -> None:
    """After `model.compile(..., jit_compile=train_jit_compile(jit_compile))`: on PyTorch with
    `jit_compile` true, `fit` / `evaluate` run the whole step (forward, backward, optimizer,
    metrics) as one graph of ATen ops recorded once per batch shape, every variable an input
    (`kzoo.backend.torch_train`); False: Keras' eager step. TensorFlow, JAX: nothing (XLA).

    Args:
        model: keras.Model. compiled, with its optimizer.
        jit_compile: bool or str. True: "graph" (the recorded graph replayed as it is);
            "inductor" or "aot_eager": `torch.compile` of that graph with this backend.

    Raises:
        ValueError: on PyTorch, a `jit_compile` string that is not one of those compilers.

    Example: `backend.compile_train_step(model, True)` after `model.compile(...)`.
    """
    _module("compile_train_step", _keras_compiles_the_step)(model, jit_compile)


def _keras_compiles_the_step(model, jit_compile):
    pass  # TensorFlow and JAX: `model.compile`'s jit_compile is Keras' XLA


def is_concrete(tensor) -> bool:
    """True when `tensor` is a backend tensor holding values now (eager), False while it is
    traced or compiled (`tf.function`, `jax.jit`, `torch.compile`) or not a backend tensor.

    Args:
        tensor: any. the value to ask about (numpy arrays give False: not a backend tensor).

    Example: `backend.is_concrete(ops.ones((2,)))` is True in an eager call.
    """
    module = _backend_module(name())
    return module is not None and module.is_concrete(tensor)


def clip_global_batch(grads, clip):
    """`clip(grads)` applied to the gradient of the whole global batch. Under a `tf.distribute`
    strategy with several replicas the replicas' gradients are summed first, clipped, and
    divided by the replica count (the sum Keras then takes gives back the clipped global
    gradient); elsewhere (one replica, JAX, PyTorch) it is `clip(grads)`.

    Args:
        grads: list of tensors or None. this replica's gradients.
        clip: callable. list -> list, e.g. Keras' `Optimizer._clip_gradients`.

    Example: `return backend.clip_global_batch(grads, super()._clip_gradients)`.
    """
    return _module("clip_global_batch")(grads, clip)


def distribution_names() -> tuple:
    """The distribution names the backend has (see `kzoo.training.distribute`); () on a backend
    kzoo does not support.

    Example: `backend.distribution_names()` is ("none",) on PyTorch.
    """
    module = _backend_module(name())
    return tuple(getattr(module, "DISTRIBUTIONS", ()))


# The sharded layouts need `keras.distribution.ModelParallel`, which these backends have.
MODEL_PARALLEL_NAMES = ("fsdp", "tensor_parallel")
MODEL_PARALLEL_BACKENDS = ("jax",)


def distribution(strategy_name: str, logical_cpus: int = 0, mesh: dict | None = None):
    """The distribution strategy called `strategy_name`: a `tf.distribute.Strategy` on
    TensorFlow, a `KerasStrategy` on JAX and PyTorch. Create it before any other op runs.

    Args:
        strategy_name: str. one of `distribution_names()`: "none", "data_parallel"
            (TensorFlow MirroredStrategy, JAX `keras.distribution.DataParallel`), "mirrored"
            (the same), "multi_worker" (TensorFlow, needs TF_CONFIG), "fsdp" or
            "tensor_parallel" (JAX `keras.distribution.ModelParallel` on a mesh).
        logical_cpus: int. split the CPU into this many devices first (0/1: don't).
        mesh: dict | None. `{"batch": N, "model": M}` for fsdp / tensor_parallel (N x M must
            be the device count); None: every device on `model`.

    Raises:
        ValueError: one line naming `strategy_name` and the values allowed on this backend
            (for fsdp / tensor_parallel elsewhere: the backends that have them), or a mesh
            whose size is not the device count.

    Example: `backend.distribution("data_parallel", logical_cpus=2).num_replicas_in_sync` is 2.
    """
    allowed = distribution_names()
    if strategy_name in MODEL_PARALLEL_NAMES and strategy_name not in allowed:
        raise ValueError(f"distribution {strategy_name!r} needs keras.distribution."
                         f"ModelParallel, which the {' and '.join(MODEL_PARALLEL_BACKENDS)} "
                         f"backend has, not {name()}; set KERAS_BACKEND="
                         f"{MODEL_PARALLEL_BACKENDS[0]}")
    if strategy_name not in allowed:
        raise ValueError(f"unknown distribution {strategy_name!r} for the {name()} backend; "
                         f"valid: {sorted(allowed)}")
    if strategy_name in MODEL_PARALLEL_NAMES:
        return _module("distribution")(strategy_name, logical_cpus, mesh)
    return _module("distribution")(strategy_name, logical_cpus)


def split_cpu(logical_cpus: int) -> None:
    """Split the CPU into `logical_cpus` devices, before the backend initializes its devices:
    TensorFlow logical devices; JAX `jax_num_cpu_devices` (as XLA_FLAGS
    `--xla_force_host_platform_device_count`); PyTorch cannot (only 0 or 1 are allowed).

    Args:
        logical_cpus: int. devices wanted (0 or 1: nothing to do).

    Raises:
        ValueError: the backend's devices are initialized already (start a fresh process).

    Example: `backend.split_cpu(2)` at the top of a test of two replicas on a CPU.
    """
    _module("split_cpu")(logical_cpus)


__all__ = ["KerasStrategy", "apply_gradients", "average_loss", "clip_global_batch",
           "compile_function", "compile_step", "compile_train_step", "control_dependencies",
           "distribution", "distribution_names", "is_concrete", "matmul_transposed", "name",
           "replica_mean", "replica_sum", "split_cpu", "stateful_step", "train_jit_compile",
           "update_slice"]
