"""Sharded state written and read shard by shard with Orbax (JAX only), behind the backend seam.

`kzoo.training.checkpoints` keeps the run folder's protocol (the `.tmp` folder, the manifest,
the rename, `LATEST`, `keep`); this module does the part that needs JAX and Orbax:

- `is_spread(variables)`: True when some variable's value is split over several devices (an
  fsdp or tensor_parallel run with a model axis > 1). Only then is a checkpoint written with
  Orbax; whole (replicated) state keeps the `.weights.h5` format.
- `save_tree(folder, variables)`: every process writes the shards its own devices hold
  (`orbax.checkpoint.StandardCheckpointHandler`, synchronously, TensorStore's OCDBT format:
  `ocdbt.process_<i>/` per process: `process_folder(i)`), one flat tree `{position: array}`
  (the variables in the order given, as `.weights.h5` files do). Nothing is gathered to a host.
- `restore_tree(folder, variables)`: reads the tree with each variable's CURRENT sharding as
  the target, so a checkpoint saved on a 1x4 mesh loads onto 1x2 or one device (Orbax reads
  only the slices each device needs), checks that it names exactly these variables with
  these shapes, then assigns them. Nothing is assigned unless all of it was read. Orbax reads
  JSON, msgpack and array bytes: no code from the folder runs.
- `barrier(name)`: every process waits for the others (Orbax's barrier through JAX's
  distributed client; nothing on one process).

Example (KERAS_BACKEND=jax, a model built under a `keras.distribution.ModelParallel`):
```python
from kzoo.backend import orbax_checkpoints as oc
variables = [*model.variables, *model.optimizer.variables]
if oc.is_spread(variables):
    oc.save_tree("backup/step-0000010.tmp/weights", variables)   # every process calls it
    oc.restore_tree("backup/step-0000010.tmp/weights", variables)
```
"""

from __future__ import annotations

import errno
import os

from kzoo.backend import name

# the folder inside a checkpoint that Orbax writes (its files tell the format)
FOLDER = "weights"


def is_spread(variables) -> bool:
    """True when some of `variables` holds a value split over several devices (not whole on
    each): the state no single device, or host, holds."""
    if name() != "jax":
        return False
    import jax

    for v in variables:
        value = getattr(v, "_value", None)
        if isinstance(value, jax.Array) and len(value.sharding.device_set) > 1 and (
                not value.is_fully_replicated):
            return True
    return False


def process_folder(index: int) -> str:
    """The subfolder of a `save_tree` folder that process `index` alone writes its shards into
    (Orbax's name for its OCDBT store, `ocdbt.process_<index>`): nearly all of the bytes."""
    return f"ocdbt.process_{index}"


def _tree(variables) -> dict:
    """{key: variable}, keyed by position ("00000", "00001", ...). Keras' paths start with
    names made up at build time (`causal_lm_2/...`, `adam_w_1/causal_lm_2_block_0_...`) that
    another process, or another build of the same model, does not share; `.weights.h5` files
    match by position too (the model's variables, then its optimizer's)."""
    return {f"{i:05d}": v for i, v in enumerate(variables)}


def require() -> None:
    """Raise a one-line ValueError unless Orbax can be imported (a sharded run checks it
    before training, not at its first checkpoint)."""
    try:
        import orbax.checkpoint  # noqa: F401
    except ImportError as error:
        raise ValueError(f"a sharded run (train.distribution fsdp or tensor_parallel) writes "
                         f"its checkpoints with Orbax, which cannot be imported ({error}); "
                         "pip install orbax-checkpoint") from None


def _checkpointer():
    import orbax.checkpoint as ocp

    # the synchronous Checkpointer: the call returns once this process's shards are written
    # and every process has finished (Orbax's own barrier before its final rename)
    return ocp, ocp.Checkpointer(ocp.StandardCheckpointHandler())


def save_tree(folder, variables) -> None:
    """Write `variables` into `folder` (which must not exist), each process its own shards.
    Every process of the run must call it with the same folder and variables.

    Raises:
        OSError: the disk is full (errno ENOSPC), or another write failure.
    """
    ocp, checkpointer = _checkpointer()
    tree = {key: v.value for key, v in _tree(variables).items()}
    try:
        checkpointer.save(os.fspath(folder), args=ocp.args.StandardSave(tree))
    except OSError:
        raise
    except Exception as error:  # TensorStore reports a full disk in its message only
        if "No space left" in str(error):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(folder)) from None
        raise


def restore_tree(folder, variables) -> None:
    """Read `folder` into `variables`, each laid out as it is now (resharding on read).

    Raises:
        ValueError: one line: the folder is not a readable Orbax tree, or it holds other
            variables (a missing or extra path, another shape) than `variables`.
    """
    import jax

    ocp, checkpointer = _checkpointer()
    wanted = _tree(variables)
    try:
        saved = checkpointer.metadata(os.fspath(folder))
        saved = getattr(saved, "item_metadata", saved)
        saved = dict(getattr(saved, "tree", saved) or {})
    except Exception as error:
        raise ValueError(f"{folder} is not a readable Orbax checkpoint "
                         f"({type(error).__name__}: {str(error)[:200]})") from None
    missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    if missing or extra:
        raise ValueError(f"{folder} holds other variables than the model ({len(saved)} "
                         f"saved, {len(wanted)} wanted; missing {missing[:2]}, extra "
                         f"{extra[:2]})")
    for key, v in wanted.items():
        if tuple(saved[key].shape) != tuple(v.shape):
            raise ValueError(f"{folder}: variable {v.path} has shape {tuple(saved[key].shape)} "
                             f"in the checkpoint, {tuple(v.shape)} in the model")
    # the targets: today's shapes, dtypes and shardings (a 1x2 mesh, one device...)
    targets = {key: jax.ShapeDtypeStruct(v.shape, v.value.dtype, sharding=v.value.sharding)
               for key, v in wanted.items()}
    try:
        values = checkpointer.restore(os.fspath(folder), args=ocp.args.StandardRestore(targets))
    except Exception as error:
        raise ValueError(f"{folder} could not be read ({type(error).__name__}: "
                         f"{str(error)[:200]})") from None
    for key, v in wanted.items():
        v.assign(values[key])


def barrier(key: str) -> None:
    """Wait until every process of the run reached `key` (nothing on one process)."""
    if name() != "jax":
        return
    import jax

    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost

    multihost.sync_global_processes(key)
