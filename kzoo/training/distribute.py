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

Several processes (JAX): a run over several hosts, or several local processes, is one program
on a mesh over every process's devices. Each process is told who it is by the environment
variables `keras.distribution.initialize` reads, `KERAS_DISTRIBUTION_JOB_ADDRESSES` (process
0's `HOST:PORT` first), `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`,
so one config serves every process; `KZOO_COORDINATOR_TIMEOUT` (seconds, default 60) bounds the
wait for the coordinator and the peers. `get_strategy` then joins the processes
(`kzoo.backend.processes.connect`) before it lists the devices; the mesh is the global one.
Process 0 is the chief (`is_chief`): it alone writes the run folder. Each process feeds only its
slice of every global batch (`process_slice`, an input context for `kzoo.data`'s pipelines), so
Keras' own dataset auto-sharding (every process reads the whole batch and drops the rest) is off.
Saving, sampling and evaluating read whole weights, which no process holds: run them inside
`on_host(model)` on every process (a gather to host memory; only the chief then writes).

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
import dataclasses
import json
import os

from kzoo import backend
from kzoo.backend import KerasStrategy, processes

# What keras.distribution.initialize reads, and kzoo's bound on the wait for the others.
PROCESS_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                     "KERAS_DISTRIBUTION_PROCESS_ID")
TIMEOUT_VARIABLE = "KZOO_COORDINATOR_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0

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
            count (of all processes, under several). Under several processes
            (`process_spec`): malformed variables, another backend than JAX, `none`, or a
            coordinator not reached within the timeout (`kzoo.backend.processes.connect`).

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
    spec = process_spec()
    if spec is None:
        return backend.distribution(name, logical_cpus, mesh)
    if name in ("none", "multi_worker"):
        raise ValueError(f"{spec.count} processes (KERAS_DISTRIBUTION_NUM_PROCESSES) need "
                         "distribution data_parallel, fsdp or tensor_parallel; got "
                         f"distribution {name!r}")
    if not processes.connected():  # the CPU split and the join both precede JAX's devices
        backend.split_cpu(logical_cpus)
    processes.connect(spec.coordinator, spec.count, spec.index, spec.timeout_s)
    total, local = processes.device_counts()
    if mesh is not None and mesh["batch"] * mesh["model"] != total:
        raise ValueError(f"mesh {{batch: {mesh['batch']}, model: {mesh['model']}}} holds "
                         f"{mesh['batch'] * mesh['model']} devices but {total} are available "
                         f"over {spec.count} processes ({local} in this one); make batch x "
                         "model equal the device count of all processes")
    return backend.distribution(name, 0, mesh)  # the CPU is split already


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """Who this process is in a run of several (from the environment, `process_spec`).

    coordinator: str. process 0's `HOST:PORT`.
    count: int. processes in the run (> 1).
    index: int. this process, 0 (the chief) to count - 1.
    timeout_s: float. seconds to wait for the coordinator and the peers.
    """

    coordinator: str
    count: int
    index: int
    timeout_s: float = DEFAULT_TIMEOUT_S


def process_spec(environ=None) -> ProcessSpec | None:
    """This process's place in a run of several processes, from the variables Keras reads
    (`PROCESS_VARIABLES`) and `KZOO_COORDINATOR_TIMEOUT`; None for a single process
    (KERAS_DISTRIBUTION_NUM_PROCESSES unset or 1).

    Args:
        environ: dict | None. the environment (None: `os.environ`).

    Raises:
        ValueError: one line naming the variable whose value is missing or malformed.

    Example:
    ```python
    process_spec({"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234",
                  "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "1"})
    # ProcessSpec(coordinator='10.0.0.1:1234', count=2, index=1, timeout_s=60.0)
    ```
    """
    env = os.environ if environ is None else environ
    addresses_name, count_name, index_name = PROCESS_VARIABLES

    def number(key, kind, low):
        text = env.get(key, "").strip()
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value >= low:  # NaN too
            raise ValueError(f"{key}={text!r} must be a number >= {low:g}")
        return value

    if not env.get(count_name, "").strip() or number(count_name, int, 1) == 1:
        return None
    count = number(count_name, int, 1)
    if index_name not in env:
        raise ValueError(f"{count_name}={count} needs {index_name} (0 to {count - 1})")
    index = number(index_name, int, 0)
    if index >= count:
        raise ValueError(f"{index_name}={index} must be below {count_name}={count}")
    addresses = [a.strip() for a in env.get(addresses_name, "").split(",") if a.strip()]
    if not addresses:
        raise ValueError(f"{count_name}={count} needs {addresses_name} (process 0's HOST:PORT)")
    if len(addresses) > 1 and len(addresses) != count:  # Keras' rule: one per process, or one
        raise ValueError(f"{addresses_name} lists {len(addresses)} addresses for {count_name}="
                         f"{count}; give one per process, or process 0's alone")
    timeout = (number(TIMEOUT_VARIABLE, float, 0.001) if env.get(TIMEOUT_VARIABLE, "").strip()
               else DEFAULT_TIMEOUT_S)
    return ProcessSpec(addresses[0], count, index, timeout)


@dataclasses.dataclass(frozen=True)
class ProcessSlice:
    """The part of every global batch this process feeds, as the input context `kzoo.data`'s
    pipelines read (the attributes of a `tf.distribute.InputContext`): slice
    `input_pipeline_id` of `num_input_pipelines` equal, contiguous slices."""

    input_pipeline_id: int
    num_input_pipelines: int

    def get_per_replica_batch_size(self, global_batch_size: int) -> int:
        if global_batch_size % self.num_input_pipelines:
            raise ValueError(f"train.batch_size={global_batch_size} must be divisible by the "
                             f"{self.num_input_pipelines} processes that feed it")
        return global_batch_size // self.num_input_pipelines


def process_slice(strategy) -> ProcessSlice | None:
    """The slice of every global batch this process feeds under `strategy`; None on one process.

    The batch is split along the mesh's `batch` axis; with P processes over N rows of it each
    process feeds N/P rows' worth (N >= P), or the processes sharing a row feed the same rows
    (N < P): Keras' `Distribution.data_shard_id`. Keras' auto-sharding is turned off, since the
    pipeline reads only this slice.

    Example: `train_dataset(tokens, 128, 16, seed, input_context=process_slice(strategy))`.
    """
    distribution = getattr(strategy, "distribution", None)
    if distribution is None or distribution.num_processes == 1:
        return None
    distribution.auto_shard_dataset = False
    shards = min(distribution.num_model_replicas, distribution.num_processes)
    return ProcessSlice(distribution.data_shard_id, shards)


def on_host(model):
    """Context manager for every process: the model's weights and optimizer state whole in
    host memory while the block saves, samples or evaluates (several processes; nothing on one).

    Example:
    ```python
    with on_host(model):
        if is_chief():
            model.save("model.keras")
    ```
    """
    optimizer = getattr(model, "optimizer", None)
    return processes.host_values([*model.variables,
                                  *(optimizer.variables if optimizer is not None else ())])


def host_callbacks(callbacks: list) -> list:
    """`callbacks` (whose `on_epoch_end` save or sample) run at each interval's end inside
    `on_host(model)`: two callbacks around them enter and leave it. Unchanged on one process."""
    if not processes.connected():
        return list(callbacks)
    import keras

    class Enter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.stack = contextlib.ExitStack()
            self.stack.enter_context(on_host(self.model))

    class Leave(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            enter.stack.close()

    enter = Enter()
    return [enter, *callbacks, Leave()]


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
    """True unless this process is not the first of several: a JAX process whose index is not
    0 (`process_spec`), or a worker that TF_CONFIG names a non-chief (index > 0)."""
    spec = process_spec()
    if spec is not None:
        return spec.index == 0
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = config.get("task", {})
    cluster = config.get("cluster", {})
    if task.get("type") == "chief":
        return True
    if "chief" in cluster:
        return False
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0
