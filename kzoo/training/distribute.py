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

The strategies themselves are made by `kzoo.backend.distribution` (the backend seam).
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

from kzoo import backend
from kzoo.backend import KerasStrategy

STRATEGY_NAMES = ("data_parallel", "mirrored", "multi_worker", "none")


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


def split_cpu(logical_cpus: int) -> None:
    """Split the CPU into `logical_cpus` devices before the backend initializes them
    (`kzoo.backend.split_cpu`: TensorFlow logical devices, JAX host devices).

    Example: `split_cpu(2)` at the top of a two-replica test on a CPU.
    """
    backend.split_cpu(logical_cpus)


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
    return backend.distribution(name, logical_cpus)


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
