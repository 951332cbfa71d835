"""Pre-training's divergence guard: `TrainingGuard` stops training on a NaN/inf or exploding
loss and remembers where and why; `NaNLossError` is what `pretrain` then raises; `global_step`
is the step count every callback reports.

The other callbacks (`kzoo.training.callbacks` lists them all) check `guard.tripped` before
writing anything. The fine-tuning recipes' guard, which also restores the last good weights,
is `kzoo.training.guard.NaNGuard`.

Example:
```python
from kzoo.training.divergence import TrainingGuard
guard = TrainingGuard(max_loss_factor=4.0)
guard.on_train_batch_end(0, {"loss": 2.0})   # the reference loss
guard.tripped                                # False
```
"""

from __future__ import annotations

import math

import keras


class NaNLossError(RuntimeError):
    """Raised when training produced a non-finite loss, or a loss that exploded."""


def global_step(model) -> int:
    """The number of optimizer updates applied so far (restored with a checkpoint)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


class TrainingGuard(keras.callbacks.Callback):
    """Stop training when the loss is NaN/inf or explodes, and remember where and why.

    The loss "explodes" when a batch loss exceeds `max_loss_factor` times the run's first
    batch loss (`reference_loss`, kept across resumes). Other callbacks check `tripped`
    before writing anything.

    Args:
        max_loss_factor: float | None. the explosion threshold; None checks NaN/inf only.
        reference_loss: float | None. the starting loss to compare with (None: this run's
            first batch loss).
    """

    def __init__(self, max_loss_factor: float | None = None,
                 reference_loss: float | None = None):
        super().__init__()
        self.max_loss_factor = max_loss_factor
        self.reference_loss = reference_loss
        self.stopped_step = None
        self.reason = None

    @property
    def tripped(self) -> bool:
        return self.stopped_step is not None

    @property
    def nan_step(self):  # the older name
        return self.stopped_step

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.tripped:
            return
        loss = float(loss)
        if not math.isfinite(loss):
            self.reason = "the training loss became NaN/inf"
        elif self.reference_loss is None:
            self.reference_loss = loss
            return
        elif self.max_loss_factor and loss > self.max_loss_factor * self.reference_loss:
            self.reason = (f"the training loss exploded to {loss:.4g}, above "
                           f"{self.max_loss_factor:g} x the starting loss "
                           f"{self.reference_loss:.4g} (train.max_loss_factor)")
        else:
            return
        self.stopped_step = global_step(self.model)
        self.model.stop_training = True


StopOnNaN = TrainingGuard  # the older name
