"""Distribution strategies by name, for the Keras backend in use.

| name              | TensorFlow                       | JAX (`keras.distribution`) | PyTorch |
|-------------------|----------------------------------|----------------------------|---------|
| `none`            | the default strategy             | one device                 | one     |
| `data_parallel`   | `tf.distribute.MirroredStrategy` | `DataParallel`             | -       |
| `mirrored`        | as `data_parallel`               | as `data_parallel`         | -       |
| `multi_worker`    | `MultiWorkerMirroredStrategy`    | -                          | -       |
| `fsdp`            | -                                | `ModelParallel`            | -       |
| `tensor_parallel` | -                                | `ModelParallel`            | -       |

`data_parallel` (and its older name `mirrored`) keeps one copy of the weights on every local
device and splits each global batch between them: on TensorFlow with MirroredStrategy, on JAX
with `keras.distribution.DataParallel` over `keras.distribution.list_devices()` (one program
over the global batch, its batch axis sharded, so gradients and their clipping are those of
the whole batch). A name the backend does not have is a one-line error naming the ones it has.

Create the strategy before any other TensorFlow or JAX op runs (multi-worker collectives and
JAX's device count require it). For CPU-only tests and demos, `logical_cpus=N` first splits
the CPU into N devices (TensorFlow logical devices; JAX `jax_num_cpu_devices`, the same as
`XLA_FLAGS=--xla_force_host_platform_device_count=N`).

`fsdp` and `tensor_parallel` shard the weights on a 2-D `DeviceMesh` `(batch, model)`
(`mesh={"batch": N, "model": M}`, N x M = the device count; without one every device is on
`model`): `keras.distribution.ModelParallel(layout_map=..., batch_dim_name="batch")`, the
batch split along `batch`, each weight laid out by `kzoo.training.layouts` (its family's
rules). The layout map is filled by `lay_out(strategy, model_arguments)` once the model's
arguments (its vocabulary) are known, before the model is built under `strategy.scope()`.
Keras creates every optimizer slot with its variable's layout, so AdamW's state is sharded
like the weights. Only JAX has `ModelParallel`: elsewhere the names are refused in one line.

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

STRATEGY_NAMES = ("data_parallel", "fsdp", "mirrored", "multi_worker", "none",
                  "tensor_parallel")


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


def get_strategy(name: str, logical_cpus: int = 0, mesh: dict | None = None):
    """Return the strategy called `name` on the current Keras backend.

    Args:
        name: str. "none", "data_parallel", "mirrored", "multi_worker", "fsdp" or
            "tensor_parallel" (see the table in the module docstring for which backend has
            which).
        logical_cpus: int. split the CPU into this many devices first (0/1: don't).
        mesh: dict | None. `{"batch": N, "model": M}`, for fsdp and tensor_parallel only.

    Returns:
        tf.distribute.Strategy on TensorFlow, KerasStrategy on JAX and PyTorch.

    Raises:
        ValueError: one line naming `name` and the values allowed on this backend (fsdp and
            tensor_parallel elsewhere than JAX: the backends that have them), a malformed
            mesh, a mesh with another distribution, or a mesh whose size is not the device
            count.

    Example:
    ```python
    strategy = get_strategy("data_parallel", logical_cpus=2)   # 2 replicas on a CPU
    fsdp = get_strategy("fsdp", logical_cpus=8, mesh={"batch": 2, "model": 4})   # JAX
    ```
    """
    from kzoo.training.layouts import LAYOUTS, check_mesh

    if mesh is not None:
        if name not in LAYOUTS:
            raise ValueError(f"train.mesh applies to the distributions {', '.join(LAYOUTS)}; "
                             f"got distribution {name!r}")
        mesh = check_mesh(mesh, "train.mesh")
    return backend.distribution(name, logical_cpus, mesh)


def lay_out(strategy, source, family=None, **overrides) -> None:
    """Give every weight of the model `source` describes its layout under a sharded
    `strategy` (fsdp, tensor_parallel); nothing for any other strategy. Call it before the
    model is built under `strategy.scope()`.

    Args:
        strategy: what `get_strategy` returned.
        source: str | dict. a preset name, a saved `.keras` model, a Hugging Face folder or
            `CausalLM` arguments (`plan.model_arguments`).
        family: Family | None. whose layout rules apply (None: the preset's, else shared).
        **overrides: `CausalLM` arguments replacing the source's (vocab_size...).

    Raises:
        ValueError: one line naming a weight, its shape and the axis the model axis does not
            divide.

    Example:
    ```python
    strategy = get_strategy("tensor_parallel", logical_cpus=8, mesh={"batch": 2, "model": 4})
    lay_out(strategy, "llama_nano", vocab_size=256)
    with strategy.scope():
        model = CausalLM.from_preset("llama_nano", vocab_size=256)
    ```
    """
    if getattr(strategy, "layout_map", None) is None:
        return
    from kzoo.training.layouts import layout_map

    if isinstance(source, (str, os.PathLike)) and str(source).endswith(".keras"):
        source = _saved_arguments(source)
        if source is None:
            return  # loading it gives the one-line error
    layout_map(strategy.layout, source, strategy.layout_map.device_mesh, family,
               into=strategy.layout_map, **overrides)


def _saved_arguments(path):
    """The `CausalLM` arguments a saved `.keras` model holds (its config.json), or None."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return dict(json.loads(archive.read("config.json"))["config"])
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return None


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
