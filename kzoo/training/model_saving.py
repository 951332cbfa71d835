"""The callbacks and helpers that write the model during pre-training: verified backups at
every interval (`Backup`, with the optimizer state, for resuming), the best model so far
(`SaveBest`) and atomic `.keras` saves of an uncompiled copy (`atomic_save_model`).

None of them writes once the `TrainingGuard` tripped, so a diverged model never replaces a
good checkpoint, `best.keras` or `model.keras`.

Example:
```python
from kzoo.models import CausalLM
from kzoo.training.model_saving import atomic_save_model
model = CausalLM.from_preset("gpt_nano", vocab_size=64, max_sequence_length=16)
atomic_save_model(model, "model.keras")   # loads with keras.models.load_model
```
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import keras

from kzoo.training import checkpoints
from kzoo.training.divergence import TrainingGuard, _finite, global_step
from kzoo.training.run_folder import write_error


def atomic_save_model(model: keras.Model, path: Path, clone: keras.Model | None = None) -> None:
    """Save an uncompiled copy of `model` (architecture + weights) to `path`, atomically.

    Uncompiled, so `import kzoo; keras.models.load_model(path)` works without the training
    package (optimizer and schedule classes) and the file stays small. Resuming uses the
    backups, which do hold the optimizer state. Pass a `clone` built once (`uncompiled_clone`)
    to save often without rebuilding the model each time.
    """
    path = Path(path)
    clone = clone if clone is not None else uncompiled_clone(model)
    clone.set_weights(model.get_weights())
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    checkpoints.ensure_free_space(path.parent, int(checkpoints.variables_bytes(clone) * 1.05)
                                  + (2 << 20), path.name)
    failure = None
    try:
        clone.save(tmp)
        os.replace(tmp, path)
    except OSError as error:
        failure = write_error(path, error)
        error.__traceback__ = None  # its frames hold the failed write's open files
    if failure is not None:
        checkpoints.release_failed_write()
        tmp.unlink(missing_ok=True)
        raise failure


_atomic_save_model = atomic_save_model  # the name older code imported


def uncompiled_clone(model: keras.Model) -> keras.Model:
    """A new, built, uncompiled model of the same architecture (weights not copied)."""
    return type(model).from_config(model.get_config())


class Backup(keras.callbacks.Callback):
    """Save a verified checkpoint (`kzoo.training.checkpoints`) at every interval's end.

    Args:
        backup_dir: str | PathLike. the `backup/` folder.
        state: dict. JSON-serializable state stored with it (best loss, reference loss); the
            interval's logs are added under "logs".
        guard: TrainingGuard | None. nothing is saved once it tripped.
        keep: int. intact checkpoints to keep (>= 1).
        enabled: bool. False on non-chief workers, which must not write.
    """

    def __init__(self, backup_dir, state: dict, guard: TrainingGuard | None = None,
                 keep: int = 2, enabled: bool = True):
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.state = state
        self.guard = guard
        self.keep = keep
        self.enabled = enabled

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not self.enabled or not _finite(logs.get("loss")):
            return
        if self.guard is not None and self.guard.tripped:
            return  # never checkpoint a diverged model, never prune good ones for it.
        if self.guard is not None and self.guard.reference_loss is not None:
            self.state["reference_loss"] = self.guard.reference_loss
        self.state["logs"] = {k: float(v) for k, v in logs.items() if _finite(v)}
        checkpoints.save_checkpoint(self.model, self.backup_dir, global_step(self.model),
                                    self.state, keep=self.keep)


class SaveBest(keras.callbacks.Callback):
    """Save the full model (`.keras`) whenever `monitor` improves, atomically.

    Args:
        path: str | PathLike. where to save.
        state: dict. shared state; the best value is kept under `state["best"]` so it
            survives a resume.
        monitor: str. log key to minimize.
        guard: TrainingGuard | None. nothing is saved once it tripped.
        enabled: bool. False on non-chief workers.
    """

    def __init__(self, path, state: dict, monitor: str = "val_loss",
                 guard: TrainingGuard | None = None, enabled: bool = True):
        super().__init__()
        self.path = Path(path)
        self.state = state
        self.monitor = monitor
        self.guard = guard
        self.enabled = enabled
        self._clone = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if not _finite(value) or (self.guard is not None and self.guard.tripped):
            return
        if float(value) < self.state.get("best", math.inf):
            self.state["best"] = float(value)
            if self.enabled:
                if self._clone is None:
                    self._clone = uncompiled_clone(self.model)
                atomic_save_model(self.model, self.path, self._clone)
