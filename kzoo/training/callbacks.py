"""Training callbacks: the divergence guard, verified backups, best model, metrics, samples.

Every callback that writes asks the `TrainingGuard` first: once the loss went NaN/inf or
exploded while finite, nothing more is saved, so a diverged model never replaces a good
checkpoint, `best.keras` or `model.keras`. Steps are global steps (the optimizer's iteration
count, which the checkpoints restore), so a run resumed with another `eval_interval` or
`steps_per_execution` continues at the exact step it stopped.

Each kind lives in its own module; every name is importable from here:
- `kzoo.training.divergence`: `TrainingGuard`, `NaNLossError`, `global_step`.
- `kzoo.training.model_saving`: `Backup`, `SaveBest`, `atomic_save_model`, `uncompiled_clone`.
- `kzoo.training.metrics_log`: `IntervalMetrics`, `MetricsLog`, `plot_metrics`.
- `kzoo.training.text_samples`: `PrintSample`, `generate_text`.

Example:

>>> import keras
>>> from kzoo.training.callbacks import TrainingGuard
>>> guard = TrainingGuard(max_loss_factor=4.0)
>>> isinstance(guard, keras.callbacks.Callback)
True
"""

from kzoo.training import checkpoints
from kzoo.training.divergence import NaNLossError, StopOnNaN, TrainingGuard, global_step
from kzoo.training.metrics_log import IntervalMetrics, MetricsLog, plot_metrics
from kzoo.training.model_saving import (
    Backup,
    SaveBest,
    _atomic_save_model,
    atomic_save_model,
    uncompiled_clone,
)
from kzoo.training.text_samples import PrintSample, generate_text

# Re-exported: `pretrain`, benchmarks, tests and older code import them from here.
__all__ = ["LATEST", "Backup", "IntervalMetrics", "MetricsLog", "NaNLossError", "PrintSample",
           "SaveBest", "StopOnNaN", "TrainingGuard", "_atomic_save_model", "atomic_save_model",
           "generate_text", "global_step", "plot_metrics", "uncompiled_clone"]

LATEST = checkpoints.LATEST
