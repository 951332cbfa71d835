"""Training callbacks: atomic resumable backups, NaN guard, best model, metrics, samples, plots.

`AtomicBackup` writes `backup/step-NNNNNNN/` (weights with optimizer state, plus `state.json`)
into a temporary folder, renames it into place and only then points `backup/LATEST` at it
(temporary file + `os.replace`). A `kill -9` at any moment leaves `LATEST` naming a complete
checkpoint, so a rerun loses at most one interval. `restore_backup` reads it back.

Example:

>>> import keras
>>> from kzoo.training.callbacks import StopOnNaN
>>> guard = StopOnNaN()
>>> isinstance(guard, keras.callbacks.Callback)
True
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

LATEST = "LATEST"


class NaNLossError(RuntimeError):
    """Raised when training produced a non-finite loss."""


def _atomic_save_model(model: keras.Model, path: Path) -> None:
    """Save an uncompiled copy of `model` (architecture + weights) to `path`, atomically.

    Uncompiled, so `import kzoo; keras.models.load_model(path)` works without the training
    package (optimizer and schedule classes) and the file stays small. Resuming uses the
    backups, which do hold the optimizer state.
    """
    clone = type(model).from_config(model.get_config())
    clone.set_weights(model.get_weights())
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    clone.save(tmp)
    os.replace(tmp, path)


def restore_backup(model: keras.Model, backup_dir: str | os.PathLike) -> dict | None:
    """Load the newest complete backup into `model` (and its optimizer); return its state.

    Returns None when `backup_dir` holds no complete backup. The model must be compiled.
    """
    backup_dir = Path(backup_dir)
    pointer = backup_dir / LATEST
    if not pointer.is_file():
        return None
    folder = backup_dir / pointer.read_text(encoding="utf-8").strip()
    weights, state_file = folder / "ckpt.weights.h5", folder / "state.json"
    if not (weights.is_file() and state_file.is_file()):
        raise ValueError(f"{pointer} names {folder}, which is incomplete; delete {backup_dir}")
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # optimizer slots must exist to load.
    model.load_weights(weights)
    return json.loads(state_file.read_text(encoding="utf-8"))


class AtomicBackup(keras.callbacks.Callback):
    """Save weights, optimizer state and `state` at every epoch end, atomically.

    Args:
        backup_dir: str | PathLike. folder for the checkpoints.
        steps_per_epoch: int. train steps per Keras epoch (to record the global step).
        state: dict. extra JSON-serializable state to store (updated by other callbacks,
            e.g. the best validation loss).
        keep: int. complete checkpoints to keep (>= 1).
        enabled: bool. False on non-chief workers, which must not write.
    """

    def __init__(self, backup_dir, steps_per_epoch: int, state: dict | None = None,
                 keep: int = 2, enabled: bool = True):
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.steps_per_epoch = steps_per_epoch
        self.state = state if state is not None else {}
        self.keep = max(1, keep)
        self.enabled = enabled

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if not self.enabled or loss is None or not math.isfinite(float(loss)):
            return  # never checkpoint a diverged model.
        step = (epoch + 1) * self.steps_per_epoch
        name = f"step-{step:07d}"
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.backup_dir / (name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.model.save_weights(tmp / "ckpt.weights.h5")
        state = dict(self.state, epoch=epoch + 1, step=step)
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
        final = self.backup_dir / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer_tmp = self.backup_dir / (LATEST + ".tmp")
        pointer_tmp.write_text(name, encoding="utf-8")
        os.replace(pointer_tmp, self.backup_dir / LATEST)
        done = sorted(p for p in self.backup_dir.glob("step-*") if not p.name.endswith(".tmp"))
        for old in done[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


class StopOnNaN(keras.callbacks.Callback):
    """Stop training at the first non-finite batch loss and remember where it happened.

    Args:
        steps_per_epoch: int. to turn (epoch, batch) into a global step in the message.
    """

    def __init__(self, steps_per_epoch: int = 1):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.nan_step = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_step = self.epoch * self.steps_per_epoch + batch + 1
            self.model.stop_training = True


class SaveBest(keras.callbacks.Callback):
    """Save the full model (`.keras`) whenever `monitor` improves, atomically.

    Args:
        path: str | PathLike. where to save.
        state: dict. shared state; the best value is kept under `state["best"]` so it
            survives a resume.
        monitor: str. log key to minimize.
        enabled: bool. False on non-chief workers.
    """

    def __init__(self, path, state: dict, monitor: str = "val_loss", enabled: bool = True):
        super().__init__()
        self.path = Path(path)
        self.state = state
        self.monitor = monitor
        self.enabled = enabled

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        if float(value) < self.state.get("best", math.inf):
            self.state["best"] = float(value)
            if self.enabled:
                _atomic_save_model(self.model, self.path)


class IntervalMetrics(keras.callbacks.Callback):
    """Add `step`, `lr`, `val_perplexity` and training `tokens_per_s` to the epoch logs.

    Put it before CSVLogger/TensorBoard so they record the added keys. Throughput counts
    train batches only (not validation) and skips each epoch's first batch, which may
    include compilation.

    Args:
        steps_per_epoch: int. train steps per Keras epoch.
        tokens_per_step: int. global batch size x block size.
    """

    def __init__(self, steps_per_epoch: int, tokens_per_step: int):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.tokens_per_step = tokens_per_step
        self.train_seconds = 0.0
        self.timed_steps = 0
        self._t = None

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter() if batch > 0 else None

    def on_train_batch_end(self, batch, logs=None):
        if self._t is not None:
            self.train_seconds += time.perf_counter() - self._t
            self.timed_steps += 1

    def tokens_per_second(self) -> float:
        return self.timed_steps * self.tokens_per_step / max(self.train_seconds, 1e-9)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["step"] = (epoch + 1) * self.steps_per_epoch
        opt = self.model.optimizer
        logs["lr"] = float(keras.ops.convert_to_numpy(opt.learning_rate))
        if "val_loss" in logs:
            logs["val_perplexity"] = float(math.exp(min(float(logs["val_loss"]), 50.0)))
        logs["tokens_per_s"] = self.tokens_per_second()


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 100,
                  temperature: float = 0.8, top_k: int | None = 40, seed: int = 0) -> str:
    """Sample a continuation of `prompt` with the model's key/value cache.

    Args:
        model: kzoo CausalLM. the model.
        tokenizer: kzoo Tokenizer. encodes the prompt, decodes the result.
        prompt: str. start text (empty: start from the end-of-text token).
        max_new_tokens: int. tokens to add (clipped to the model's positions).
        temperature: float. 0 means greedy.
        top_k: int | None. sample among the k most likely tokens.
        seed: int. sampling seed.
    """
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in tokenizer.encode(prompt)] or [tokenizer.eot_id]
    ids = ids[-(model.max_sequence_length - 1):]
    total = min(len(ids) + max_new_tokens, model.max_sequence_length)
    cache = model.init_cache(1, total)
    logits, cache = model.call_with_cache(np.array([ids], np.int32), cache, 0)
    out = []
    for position in range(len(ids), total):  # sample the token at `position`
        last = np.asarray(keras.ops.convert_to_numpy(logits[0, -1]), np.float64)
        if temperature <= 0:
            token = int(np.argmax(last))
        else:
            last = last / temperature
            if top_k:
                last[last < np.sort(last)[-min(top_k, last.size)]] = -np.inf
            probs = np.exp(last - last.max())
            token = int(rng.choice(last.size, p=probs / probs.sum()))
        out.append(token)
        if position == total - 1:
            break
        logits, cache = model.call_with_cache(np.array([[token]], np.int32), cache, position)
    return prompt + tokenizer.decode(out)


class PrintSample(keras.callbacks.Callback):
    """Print a short generated sample at the end of every epoch (validation interval).

    Args:
        tokenizer: kzoo Tokenizer. for the prompt and the output.
        prompt: str. start text.
        max_new_tokens: int. tokens to generate.
        temperature: float. sampling temperature.
        top_k: int | None. top-k filter.
        enabled: bool. False on non-chief workers.
    """

    def __init__(self, tokenizer, prompt: str, max_new_tokens: int = 80,
                 temperature: float = 0.8, top_k: int | None = 40, enabled: bool = True):
        super().__init__()
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.enabled = enabled

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if not self.enabled or loss is None or not math.isfinite(float(loss)):
            return
        text = generate_text(self.model, self.tokenizer, self.prompt, self.max_new_tokens,
                             self.temperature, self.top_k, seed=epoch)
        print(f"\n--- sample after epoch {epoch + 1} ---\n{text}\n---", flush=True)


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
