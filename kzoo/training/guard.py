"""NaNGuard: the fine-tuning recipes' stop on a non-finite or exploding loss."""

from __future__ import annotations

import math
import os

import keras


class NaNGuard(keras.callbacks.Callback):
    """Stop training when a logged value turns NaN or infinite, or the loss explodes, and
    keep the last good weights.

    After every good step the weights of `model_to_guard` are kept in memory (every
    `snapshot_every` steps); at a bad step training stops and those weights are restored.
    The loss "explodes" when it exceeds `max_loss_factor` times its first value. With
    `checkpoint_path`, the guarded model's good weights are written there (atomically) at
    each good epoch's end and when training stops, so after a stop the file always holds the
    last good weights, and a bad epoch never overwrites them.

    Args:
        model_to_guard: keras.Model. the model whose weights matter (the policy for DPO).
        keys: tuple[str]. log entries to watch; missing ones are ignored.
        checkpoint_path: str or None. a `.weights.h5` path for the last good weights.
        snapshot_every: int. steps between in-memory snapshots.
        max_loss_factor: float or None. the explosion threshold on `logs["loss"]`, relative
            to the first step's loss (when it is positive); None checks NaN/inf only.

    Example:
    ```python
    guard = NaNGuard(policy, checkpoint_path="runs/dpo/policy.weights.h5")
    dpo.fit(dataset, callbacks=[guard]); guard.stopped_at  # None or (epoch, step)
    ```
    """

    def __init__(self, model_to_guard, keys=("loss", "rewards/chosen", "rewards/rejected"),
                 checkpoint_path: str | None = None, snapshot_every: int = 1,
                 max_loss_factor: float | None = None):
        super().__init__()
        self.model_to_guard = model_to_guard
        self.keys = tuple(keys)
        self.checkpoint_path = checkpoint_path
        self.snapshot_every = snapshot_every
        self.max_loss_factor = max_loss_factor
        self.stopped_at = None
        self.reason = None
        self.good_step = 0
        self._good = None
        self._epoch = 0
        self._step = 0
        self._first_loss = None

    def on_train_begin(self, logs=None):
        self.stopped_at = None
        self._good = self.model_to_guard.get_weights()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _problem(self, logs) -> str | None:
        bad = [k for k in self.keys if k in logs and not math.isfinite(float(logs[k]))]
        if bad:
            return f"non-finite {', '.join(bad)}"
        loss = logs.get("loss")
        if loss is None or not self.max_loss_factor:
            return None
        loss = float(loss)
        if self._first_loss is None:
            self._first_loss = loss
        elif self._first_loss > 0 and loss > self.max_loss_factor * self._first_loss:
            return (f"loss {loss:.4g} exploded above {self.max_loss_factor:g} x its first "
                    f"value {self._first_loss:.4g}")
        return None

    def on_train_batch_end(self, batch, logs=None):
        # On JAX, fit keeps the weights out of the variables during an epoch; reading
        # `self.model` puts them back (jax_state_sync) before `model_to_guard` is read or reset.
        self.model  # noqa: B018
        problem = self._problem(logs or {})
        if problem:
            self.stopped_at = (self._epoch, batch)
            self.reason = problem
            print(f"NaNGuard: {problem} at epoch {self._epoch} step {batch}; "
                  "stopping and restoring the last good weights.")
            self.model_to_guard.set_weights(self._good)
            self.model.stop_training = True
            self._write()
            return
        self._step += 1
        if self._step % self.snapshot_every == 0:
            self._good = self.model_to_guard.get_weights()
            self.good_step = self._step

    def _write(self):
        if not self.checkpoint_path:
            return
        path = str(self.checkpoint_path)
        tmp = path[: -len(".weights.h5")] + ".tmp.weights.h5"
        self.model_to_guard.save_weights(tmp)
        os.replace(tmp, path)

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped_at is None:
            self._write()
