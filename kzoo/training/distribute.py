"""Distribution strategies by name, for the Keras backend in use.

| name            | TensorFlow                       | JAX                               | PyTorch |
|-----------------|----------------------------------|-----------------------------------|---------|
| `none`          | the default strategy             | one device                        | one     |
| `data_parallel` | `tf.distribute.MirroredStrategy` | `keras.distribution.DataParallel` | -       |
| `mirrored`      | as `data_parallel`               | as `data_parallel`                | -       |
| `multi_worker`  | `MultiWorkerMirroredStrategy`    | -                                 | -       |

`data_parallel` (and its older name `mirrored`) keeps one copy of the weights on every local
device and splits each global batch between them: on TensorFlow with MirroredStrategy, on JAX
with `keras.distribution.DataParallel` over `keras.distribution.list_devices()` (one program
over the global batch, its batch axis sharded, so gradients and their clipping are those of
the whole batch). A name the backend does not have is a one-line error naming the ones it has.

Create the strategy before any other TensorFlow or JAX op runs (multi-worker collectives and
JAX's device count require it). For CPU-only tests and demos, `logical_cpus=N` first splits
the CPU into N devices (TensorFlow logical devices; JAX `jax_num_cpu_devices`, the same as
`XLA_FLAGS=--xla_force_host_platform_device_count=N`).

`get_strategy` returns either a `tf.distribute.Strategy` (TensorFlow) or a `KerasStrategy`
(JAX, PyTorch); both have `scope()` and `num_replicas_in_sync`. Wrap the whole run, `fit`
included, in `run_scope(strategy)`: a Keras distribution must be in effect while `fit` runs.

Example:

>>> from kzoo.training.distribute import get_strategy
>>> get_strategy("none").num_replicas_in_sync
1
"""

from __future__ import annotations

import contextlib
import json
import os

import keras

# Which names each backend has; the table above.
BACKEND_STRATEGIES = {
    "tensorflow": ("data_parallel", "mirrored", "multi_worker", "none"),
    "jax": ("data_parallel", "mirrored", "none"),
    "torch": ("none",),
}
STRATEGY_NAMES = ("data_parallel", "mirrored", "multi_worker", "none")


class KerasStrategy:
    """A `keras.distribution.Distribution` (or none) with the part of the tf.distribute
    interface kzoo's recipes use.

    Args:
        distribution: keras.distribution.Distribution | None. None: one device.
        num_replicas: int. devices the batch is split between.

    Example:
    ```python
    strategy = get_strategy("data_parallel")          # on JAX
    with run_scope(strategy), strategy.scope():
        model = build(); model.fit(dataset)             # each batch split over the devices
    ```
    """

    def __init__(self, distribution=None, num_replicas: int = 1):
        self.distribution = distribution
        self.num_replicas_in_sync = num_replicas

    def scope(self):
        """The distribution's scope (variables created in it are laid out on its devices)."""
        if self.distribution is None:
            return contextlib.nullcontext()
        return self.distribution.scope()

    def __repr__(self) -> str:
        return (f"KerasStrategy({type(self.distribution).__name__}, "
                f"num_replicas_in_sync={self.num_replicas_in_sync})")


def run_scope(strategy):
    """What a run's whole body (building, restoring, `fit`) runs under: a Keras distribution's
    scope, or nothing for a tf.distribute strategy (its models remember their strategy)."""
    if isinstance(strategy, KerasStrategy):
        return strategy.scope()
    return contextlib.nullcontext()


def is_tf_distributed(strategy, name: str) -> bool:
    """True when `strategy` is a tf.distribute strategy whose datasets must be distributed
    (`distribute_datasets_from_function`): several replicas, or a non-default strategy."""
    if isinstance(strategy, KerasStrategy):
        return False
    return strategy.num_replicas_in_sync > 1 or name != "none"


# --- TensorFlow (tf.distribute). These, and the JAX helpers below, belong in kzoo/backend.

def split_cpu(logical_cpus: int) -> None:
    """Split the first CPU into `logical_cpus` logical devices (before TF initializes)."""
    if logical_cpus <= 1:
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == logical_cpus:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(logical_cpus)]
        )
    except RuntimeError as error:
        raise ValueError(
            f"logical_cpus={logical_cpus} must be set before TensorFlow initializes its "
            f"devices (start a fresh process): {error}"
        ) from None


def _tf_none(logical_cpus: int):
    import tensorflow as tf

    return tf.distribute.get_strategy()


def _tf_mirrored(logical_cpus: int):
    import tensorflow as tf

    split_cpu(logical_cpus)
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def _tf_multi_worker(logical_cpus: int):
    import tensorflow as tf

    if "TF_CONFIG" not in os.environ:
        raise ValueError(
            "distribution 'multi_worker' needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    split_cpu(logical_cpus)
    return tf.distribute.MultiWorkerMirroredStrategy()


# --- JAX (keras.distribution).

def jax_split_cpu(logical_cpus: int) -> None:
    """Give JAX `logical_cpus` CPU devices (before its first op), like XLA_FLAGS
    `--xla_force_host_platform_device_count`."""
    if logical_cpus <= 1:
        return
    import jax

    try:  # before asking for devices: asking initializes the backends, which fixes the count
        jax.config.update("jax_num_cpu_devices", logical_cpus)
    except RuntimeError:
        if len(jax.devices("cpu")) == logical_cpus:  # set already (XLA_FLAGS, earlier call)
            return
        raise ValueError(
            f"logical_cpus={logical_cpus} must be set before JAX initializes its devices "
            "(start a fresh process, or set XLA_FLAGS=--xla_force_host_platform_device_count"
            f"={logical_cpus})") from None


def _jax_none(logical_cpus: int):
    return KerasStrategy()


def _jax_data_parallel(logical_cpus: int):
    jax_split_cpu(logical_cpus)
    devices = keras.distribution.list_devices()
    return KerasStrategy(keras.distribution.DataParallel(devices=devices), len(devices))


def _torch_none(logical_cpus: int):
    if logical_cpus > 1:
        raise ValueError(f"logical_cpus={logical_cpus} needs a distribution; on the torch "
                         "backend distribution must be 'none' (use 0)")
    return KerasStrategy()


_MAKERS = {
    ("tensorflow", "none"): _tf_none,
    ("tensorflow", "data_parallel"): _tf_mirrored,
    ("tensorflow", "mirrored"): _tf_mirrored,
    ("tensorflow", "multi_worker"): _tf_multi_worker,
    ("jax", "none"): _jax_none,
    ("jax", "data_parallel"): _jax_data_parallel,
    ("jax", "mirrored"): _jax_data_parallel,
    ("torch", "none"): _torch_none,
}


def get_strategy(name: str, logical_cpus: int = 0):
    """Return the strategy called `name` on the current Keras backend.

    Args:
        name: str. "none", "data_parallel", "mirrored" or "multi_worker" (see the table in
            the module docstring for which backend has which).
        logical_cpus: int. split the CPU into this many devices first (0/1: don't).

    Returns:
        tf.distribute.Strategy on TensorFlow, KerasStrategy on JAX and PyTorch.

    Raises:
        ValueError: one line naming `name` and the values allowed on this backend.

    Example:
    ```python
    strategy = get_strategy("data_parallel", logical_cpus=2)   # 2 replicas on a CPU
    ```
    """
    backend = keras.backend.backend()
    allowed = BACKEND_STRATEGIES.get(backend, ())
    if name not in allowed:
        raise ValueError(f"unknown distribution {name!r} for the {backend} backend; valid: "
                         f"{sorted(allowed)}")
    return _MAKERS[(backend, name)](logical_cpus)


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a non-chief worker (index > 0)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = config.get("task", {})
    cluster = config.get("cluster", {})
    if task.get("type") == "chief":
        return True
    if "chief" in cluster:
        return False
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0
