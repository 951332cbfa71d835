"""The metrics of a pre-training run: `IntervalMetrics` adds step, learning rate, validation
perplexity, throughput and overhead to each interval's logs; `MetricsLog` appends them to a CSV
file across `fit` calls and resumes; `plot_metrics` draws that file's losses into a PNG.

Example:
```python
from kzoo.training.metrics_log import MetricsLog, plot_metrics
log = MetricsLog("metrics.csv")              # a new file (resume_step=None)
log.on_epoch_end(0, {"step": 10, "loss": 3.2, "val_loss": 3.4})
log.on_epoch_end(1, {"step": 20, "loss": 2.9, "val_loss": 3.1})
plot_metrics("metrics.csv", "loss.png")      # True
```
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import keras

from kzoo.training.divergence import global_step
from kzoo.training.run_folder import write_error


class IntervalMetrics(keras.callbacks.Callback):
    """Add `step`, `lr`, `val_perplexity`, `tokens_per_s` and `overhead_s` to the epoch logs.

    Put it before the loggers so they record the added keys. Throughput counts train batches
    only (not validation) and skips each epoch's first batch, which may include compilation.
    `overhead_s` is the time spent outside training steps between the previous interval's
    last step and this interval's first (validation, sample, saves); 0 for a run's first.

    Args:
        steps_per_epoch: int. train steps per Keras epoch (kept for older callers).
        tokens_per_step: int. global batch size x block size.
    """

    def __init__(self, steps_per_epoch: int, tokens_per_step: int):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.tokens_per_step = tokens_per_step
        self.train_seconds = 0.0
        self.timed_steps = 0
        self.overheads = []
        self._t = None
        self._last_end = None
        self._overhead = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        now = time.perf_counter()
        if batch == 0:
            self._overhead = now - self._last_end if self._last_end is not None else 0.0
            if self._last_end is not None:
                self.overheads.append(self._overhead)
        self._t = now if batch > 0 else None

    def on_train_batch_end(self, batch, logs=None):
        self._last_end = time.perf_counter()
        if self._t is not None:
            self.train_seconds += self._last_end - self._t
            self.timed_steps += 1

    def tokens_per_second(self) -> float:
        return self.timed_steps * self.tokens_per_step / max(self.train_seconds, 1e-9)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["step"] = global_step(self.model)
        opt = self.model.optimizer
        logs["lr"] = float(keras.ops.convert_to_numpy(opt.learning_rate))
        if "val_loss" in logs:
            logs["val_perplexity"] = float(math.exp(min(float(logs["val_loss"]), 50.0)))
        logs["tokens_per_s"] = self.tokens_per_second()
        logs["overhead_s"] = self._overhead


def _step_of(row: dict) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:  # a row cut short by a kill
        return math.inf


class MetricsLog(keras.callbacks.Callback):
    """Append one row per interval to a CSV file, across several `fit` calls and resumes.

    The columns are fixed by the file's first row; rows past `resume_step` (written before a
    crash whose checkpoint was older) are dropped when the run resumes.

    Args:
        path: str | PathLike. the CSV file.
        resume_step: int | None. the step the run resumes from; None starts a new file.
    """

    def __init__(self, path, resume_step: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.fields = None
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                rows = [r for r in reader if _step_of(r) <= resume_step]
            if self.fields:
                self._write(rows, mode="w")
            else:  # killed before the header was flushed
                self.path.unlink()

    def _write(self, rows, mode="a"):
        tmp = self.path.with_name(self.path.name + ".tmp")
        target = tmp if mode == "w" else self.path
        try:
            with target.open(mode, newline="") as f:
                writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
                if mode == "w" or f.tell() == 0:
                    writer.writeheader()
                writer.writerows(rows)
            if mode == "w":
                os.replace(tmp, self.path)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise write_error(self.path, error) from None

    def on_epoch_end(self, epoch, logs=None):
        row = {k: (v if isinstance(v, int | str) else float(v)) for k, v in (logs or {}).items()}
        if self.fields is None:
            self.fields = ["step"] + sorted(k for k in row if k != "step")
        self._write([row])


def plot_metrics(csv_path, png_path) -> bool:
    """Draw loss and val_loss against step from a metrics CSV into a PNG; False if no rows."""
    csv_path, png_path = Path(csv_path), Path(png_path)
    if not csv_path.is_file():
        return False
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def column(name):
        return [float(r[name]) for r in rows if r.get(name) not in (None, "")]

    x_key = "step" if "step" in rows[0] else "epoch"
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "val_loss"):
        if key in rows[0]:
            ax.plot(column(x_key)[: len(column(key))], column(key), marker="o", label=key)
    ax.set_xlabel(x_key)
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return True
