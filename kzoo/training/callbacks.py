"""Training callbacks: the divergence guard, verified backups, best model, metrics, samples.

Every callback that writes asks the `TrainingGuard` first: once the loss went NaN/inf or
exploded while finite, nothing more is saved, so a diverged model never replaces a good
checkpoint, `best.keras` or `model.keras`. Steps are global steps (the optimizer's iteration
count, which the checkpoints restore), so a run resumed with another `eval_interval` or
`steps_per_execution` continues at the exact step it stopped.

Example:

>>> import keras
>>> from kzoo.training.callbacks import TrainingGuard
>>> guard = TrainingGuard(max_loss_factor=4.0)
>>> isinstance(guard, keras.callbacks.Callback)
True
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import keras

from kzoo.training import checkpoints
from kzoo.training.run_folder import write_error

LATEST = checkpoints.LATEST


class NaNLossError(RuntimeError):
    """Raised when training produced a non-finite loss, or a loss that exploded."""


def global_step(model) -> int:
    """The number of optimizer updates applied so far (restored with a checkpoint)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


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


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 100,
                  temperature: float = 0.8, top_k: int | None = 40, seed: int = 0) -> str:
    """Sample a continuation of `prompt` with the compiled, KV-cached generator.

    Compiled once per shape bucket, so a sample at every interval costs a few milliseconds
    a token after the first.

    Args:
        model: kzoo CausalLM. the model.
        tokenizer: kzoo Tokenizer. encodes the prompt, decodes the result.
        prompt: str. start text (empty: start from the end-of-text token).
        max_new_tokens: int. tokens to add (clipped to the model's positions).
        temperature: float. 0 means greedy.
        top_k: int | None. sample among the k most likely tokens.
        seed: int. sampling seed.
    """
    from kzoo import samplers

    ids = [int(i) for i in tokenizer.encode(prompt)] or [tokenizer.eot_id]
    ids = ids[-(model.max_sequence_length - 1):]
    new = max(0, min(max_new_tokens, model.max_sequence_length - len(ids)))
    if new == 0:
        return prompt
    if temperature <= 0:
        sampler = "greedy"
    elif top_k:
        sampler = samplers.serialize(samplers.get("top_k", k=top_k, temperature=temperature))
    else:
        sampler = samplers.serialize(samplers.get("random", temperature=temperature))
    result = model.generate([ids], max_new_tokens=new, sampler=sampler, seed=seed)
    return prompt + tokenizer.decode(result.token_ids[0])


class PrintSample(keras.callbacks.Callback):
    """Print a short generated sample at the end of every epoch (validation interval).

    Args:
        tokenizer: kzoo Tokenizer. for the prompt and the output.
        prompt: str. start text.
        max_new_tokens: int. tokens to generate.
        temperature: float. sampling temperature.
        top_k: int | None. top-k filter.
        guard: TrainingGuard | None. no sample once it tripped.
        enabled: bool. False on non-chief workers.
    """

    def __init__(self, tokenizer, prompt: str, max_new_tokens: int = 80,
                 temperature: float = 0.8, top_k: int | None = 40,
                 guard: TrainingGuard | None = None, enabled: bool = True):
        super().__init__()
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.guard = guard
        self.enabled = enabled

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if not self.enabled or not _finite(loss) or (self.guard and self.guard.tripped):
            return
        step = global_step(self.model)
        text = generate_text(self.model, self.tokenizer, self.prompt, self.max_new_tokens,
                             self.temperature, self.top_k, seed=step)
        print(f"\n--- sample at step {step} ---\n{text}\n---", flush=True)


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
