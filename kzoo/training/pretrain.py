"""Pre-training for next-token prediction with `model.fit`: the config schema and `pretrain()`.

One Keras epoch is `train.eval_interval` steps; at every epoch end the run validates (loss
and perplexity), writes metrics, saves a resumable backup, keeps the best model and prints
a sample. Running the same config again continues from the last backup.

Example:

>>> from kzoo.training.pretrain import PretrainConfig
>>> PretrainConfig().train.schedule
'cosine'

```python
from kzoo.training import PretrainConfig, load_config, pretrain
cfg = load_config("recipes/configs/gpt/nano_pydocs_pretrain.yaml", PretrainConfig,
                  overrides=["train.steps=20", "run_dir=/tmp/demo"])
result = pretrain(cfg)          # {"val_loss": ..., "tokens_per_s": ..., "run_dir": ...}
```
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from typing import Any, Literal

import keras

from kzoo.data import check_token_counts, eval_dataset, load_documents, split_tokens
from kzoo.data import train_dataset as make_train_dataset
from kzoo.tokenizers import check_vocab, load_tokenizer, train_tokenizer
from kzoo.training import callbacks as cb
from kzoo.training.config import RunDir, config_to_dict, load_config, save_config
from kzoo.training.distribute import get_strategy, is_chief
from kzoo.training.optimizers import build_adamw
from kzoo.training.schedules import WarmupSchedule


@dataclasses.dataclass
class DataConfig:
    source: str = "pydocs"  # "pydocs", "pydocs+docstrings", "tfds:NAME" or a path/glob
    train_split: str = "train"  # TFDS split for training
    validation_split: str | None = None  # TFDS split for validation; None: a tail fraction
    validation_fraction: float = 0.1  # share of the token stream kept for validation
    data_dir: str | None = None  # TFDS data_dir
    manual_dir: str | None = None  # TFDS manual_dir (offline copy of the raw files)


@dataclasses.dataclass
class TokenizerConfig:
    kind: Literal["char", "byte", "bpe"] = "bpe"
    vocab_size: int | None = None  # bpe only
    path: str | None = None  # load a saved tokenizer folder instead of training one


@dataclasses.dataclass
class ModelConfig:
    preset: str = "gpt_nano"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)  # CausalLM overrides
    init_from: str | None = None  # start from a saved .keras model


@dataclasses.dataclass
class TrainConfig:
    block_size: int = 128
    batch_size: int = 16  # global, over all replicas and workers
    steps: int = 500
    eval_interval: int = 100  # steps per Keras epoch: validate, log, back up, sample
    val_batches: int = 20
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 50
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    epsilon: float = 1e-8
    clip_norm: float | None = 1.0
    dtype: Literal["float32", "mixed_bfloat16"] = "float32"
    jit_compile: bool = True
    steps_per_execution: int = 1
    distribution: Literal["none", "mirrored", "multi_worker"] = "none"
    logical_cpus: int = 0  # split the CPU into N logical devices (tests, demos)
    verbose: int = 1  # Keras progress bar: 0 silent, 1 bar, 2 one line per epoch
    tensorboard: bool = True


@dataclasses.dataclass
class SampleConfig:
    prompt: str = ""
    max_new_tokens: int = 100
    temperature: float = 0.8
    top_k: int | None = 40
    every_interval: bool = True  # also print a sample at each validation


@dataclasses.dataclass
class PretrainConfig:
    run_dir: str = "runs/pretrain"
    seed: int = 1337
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)


# Sections that define what a checkpoint means; a resumed run must agree on them.
_IDENTITY = ("data", "tokenizer", "model", "train.block_size", "train.dtype")


def _identity(config_dict: dict) -> dict:
    out = {}
    for key in _IDENTITY:
        node = config_dict
        for part in key.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else None
        out[key] = node
    return out


def _check_resumable(config: PretrainConfig, run: RunDir) -> None:
    saved = load_config(run.config, PretrainConfig)
    old, new = _identity(config_to_dict(saved)), _identity(config_to_dict(config))
    changed = [k for k in _IDENTITY if old[k] != new[k]]
    if changed:
        raise ValueError(
            f"{run.root} holds a checkpoint of a different run (changed: {', '.join(changed)}); "
            "use another run_dir or restore those settings"
        )


def _validate(config: PretrainConfig) -> None:
    t = config.train
    for name in ("block_size", "batch_size", "steps", "eval_interval", "val_batches"):
        if getattr(t, name) < 1:
            raise ValueError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.steps % t.eval_interval:
        raise ValueError(
            f"train.steps ({t.steps}) must be a multiple of train.eval_interval "
            f"({t.eval_interval}): one Keras epoch is one interval"
        )
    if config.tokenizer.vocab_size is not None and config.tokenizer.kind != "bpe":
        raise ValueError("tokenizer.vocab_size applies to kind 'bpe' only")


def _load_tokens(config: PretrainConfig, run: RunDir, resume: bool):
    d = config.data
    train_docs = load_documents(d.source, d.train_split, d.data_dir, d.manual_dir)
    if resume:
        tokenizer = load_tokenizer(run.tokenizer)
    elif config.tokenizer.path:
        tokenizer = load_tokenizer(config.tokenizer.path)
    else:
        options = {}
        if config.tokenizer.vocab_size is not None:
            options["vocab_size"] = config.tokenizer.vocab_size
        tokenizer = train_tokenizer(config.tokenizer.kind, train_docs, **options)
    if d.validation_split:
        train_tokens = tokenizer.encode_documents(train_docs)
        val_docs = load_documents(d.source, d.validation_split, d.data_dir, d.manual_dir)
        val_tokens = tokenizer.encode_documents(val_docs)
    else:
        train_tokens, val_tokens = split_tokens(
            tokenizer.encode_documents(train_docs), d.validation_fraction
        )
    check_token_counts(train_tokens, val_tokens, config.train.block_size, config.train.batch_size)
    return tokenizer, train_tokens, val_tokens


def build_model(config: PretrainConfig, vocab_size: int):
    """Build (or load) the model of `config.model` for a tokenizer with `vocab_size` ids."""
    from kzoo.models import CausalLM

    m = config.model
    if m.init_from:
        model = keras.models.load_model(m.init_from, compile=False, safe_mode=True)
        check_vocab_size = model.vocab_size
        where = f"the model {m.init_from}"
    else:
        args = dict(m.args)
        args.setdefault("vocab_size", vocab_size)
        if config.train.dtype != "float32":
            args["dtype"] = config.train.dtype
        model = CausalLM.from_preset(m.preset, **args)
        check_vocab_size, where = model.vocab_size, "model.args.vocab_size"
    if check_vocab_size != vocab_size:
        raise ValueError(
            f"the tokenizer has {vocab_size} ids but {where} has vocab_size={check_vocab_size}"
        )
    if config.train.block_size > model.max_sequence_length:
        raise ValueError(
            f"train.block_size={config.train.block_size} exceeds the model's "
            f"max_sequence_length={model.max_sequence_length}; lower the block size or set "
            "model.args.max_sequence_length"
        )
    return model


def _compile(model, config: PretrainConfig) -> None:
    t = config.train
    schedule = WarmupSchedule(t.schedule, t.learning_rate, t.warmup_steps, t.steps,
                              t.min_learning_rate)
    optimizer = build_adamw(model, schedule, t.weight_decay, t.beta_1, t.beta_2, t.epsilon,
                            t.clip_norm)
    model.compile(optimizer=optimizer, jit_compile=t.jit_compile,
                  steps_per_execution=t.steps_per_execution)


def _logs_as_vectors(step):
    def wrapped(data):
        return {k: keras.ops.reshape(v, (1,)) for k, v in step(data).items()}

    return wrapped


def _has_tensorboard() -> bool:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        print("warning: tensorboard is not installed; skipping TensorBoard logs", flush=True)
        return False
    return True


def pretrain(config: PretrainConfig) -> dict:
    """Pre-train (or resume) the run described by `config`; return the final figures.

    Returns a dict with `run_dir`, `steps`, `loss`, `val_loss`, `val_perplexity`,
    `tokens_per_s`, `resumed_from` and `sample`.

    Raises:
        ValueError: bad config or data (nothing is written to the run folder).
        cb.NaNLossError: the loss became NaN/inf; the last good backup is kept.
    """
    t = config.train
    _validate(config)
    strategy = get_strategy(t.distribution, t.logical_cpus)  # before any other TF op
    chief = is_chief()
    run = RunDir(config.run_dir)
    resume = run.has_checkpoint()
    if resume:
        _check_resumable(config, run)
    tokenizer, train_tokens, val_tokens = _load_tokens(config, run, resume)
    keras.utils.set_random_seed(config.seed)  # same initial weights for the same seed

    with strategy.scope():
        model = build_model(config, tokenizer.vocab_size)
        check_vocab(tokenizer, model.vocab_size)
        _compile(model, config)
        model.optimizer.build(model.trainable_variables)  # slots created under the strategy
        state = (cb.restore_backup(model, run.backup) if resume else None) or {}
    initial_epoch = state.get("epoch", 0)
    steps_per_epoch, epochs = t.eval_interval, t.steps // t.eval_interval

    def train_fn(ctx=None):
        return make_train_dataset(train_tokens, t.block_size, t.batch_size, config.seed,
                                  start_step=initial_epoch * steps_per_epoch, input_context=ctx)

    def val_fn(ctx=None):
        # Repeated: each validation takes exactly val_batches, so every one sees the same
        # windows, and no iterator runs dry (distributed iterators cannot restart).
        return eval_dataset(val_tokens, t.block_size, t.batch_size, t.val_batches,
                            config.seed + 1, input_context=ctx).repeat()

    if strategy.num_replicas_in_sync > 1 or t.distribution != "none":
        # Keras 3 `fit` under a strategy builds the model from a first batch averaged over
        # replicas (int token ids turn into floats; under MultiWorkerMirroredStrategy the
        # average fails). Build model, loss and metrics here from a plain batch, then skip
        # that step.
        x, y = next(iter(val_fn()))
        with strategy.scope():
            y_pred = model(x)
            model.compute_loss(x=x, y=y, y_pred=y_pred)
            model.compute_metrics(x, y, y_pred)
        model._maybe_symbolic_build = lambda *args, **kwargs: None
        if t.distribution == "multi_worker":
            # Keras 3 averages each step's logs across workers with `reduce("MEAN", axis=0)`,
            # which fails on scalars (tensorflow/tensorflow#72388): hand it vectors of one.
            model.train_step = _logs_as_vectors(model.train_step)
            model.test_step = _logs_as_vectors(model.test_step)
        train_ds = strategy.distribute_datasets_from_function(train_fn)
        val_ds = strategy.distribute_datasets_from_function(val_fn)
    else:
        train_ds, val_ds = train_fn(), val_fn()

    created = False
    if chief:
        created = not run.root.exists()
        run.root.mkdir(parents=True, exist_ok=True)
        if not resume:
            save_config(config, run.config, header="written by kzoo pretrain: resolved config")
            shutil.rmtree(run.tokenizer, ignore_errors=True)
            tokenizer.save(run.tokenizer)
    state.setdefault("best", math.inf)
    metrics = cb.IntervalMetrics(steps_per_epoch, t.batch_size * t.block_size)
    nan_guard = cb.StopOnNaN(steps_per_epoch)
    callbacks = [
        nan_guard,
        metrics,
        cb.SaveBest(run.best_model, state, enabled=chief),
        cb.AtomicBackup(run.backup, steps_per_epoch, state, enabled=chief),
    ]
    if chief:
        callbacks.append(keras.callbacks.CSVLogger(str(run.metrics), append=resume))
        if t.tensorboard and _has_tensorboard():
            callbacks.append(keras.callbacks.TensorBoard(str(run.tensorboard), write_graph=False))
    if chief and config.sample.every_interval:
        s = config.sample
        callbacks.append(cb.PrintSample(tokenizer, s.prompt, s.max_new_tokens, s.temperature,
                                        s.top_k))
    if initial_epoch:
        print(f"Resuming {run.root} from step {initial_epoch * steps_per_epoch}", flush=True)
    start = time.perf_counter()
    try:
        history = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                            initial_epoch=initial_epoch, validation_data=val_ds,
                            validation_steps=t.val_batches, callbacks=callbacks, shuffle=False,
                            verbose=t.verbose)
    except BaseException:
        if created and not run.has_checkpoint():
            shutil.rmtree(run.root, ignore_errors=True)  # nothing worth keeping yet
        raise
    wall = time.perf_counter() - start
    if nan_guard.nan_step is not None:
        latest = (run.backup / cb.LATEST).read_text().strip() if run.has_checkpoint() else None
        raise cb.NaNLossError(
            f"the training loss became NaN/inf at step {nan_guard.nan_step}; training stopped. "
            + (f"The last good checkpoint {run.backup / latest} is kept; rerun to resume from it "
               "(lower train.learning_rate first)." if latest else "No checkpoint was saved yet.")
        )
    logs = {k: v[-1] for k, v in history.history.items()} if history.history else {}
    sample = ""
    if chief:
        cb._atomic_save_model(model, run.model)
        cb.plot_metrics(run.metrics, run.loss_plot)
        s = config.sample
        sample = cb.generate_text(model, tokenizer, s.prompt, s.max_new_tokens, s.temperature,
                                  s.top_k, seed=config.seed)
        print(f"\n=== sample from {run.model} ===\n{sample}\n", flush=True)
    return {
        "run_dir": str(run.root),
        "steps": t.steps,
        "resumed_from": initial_epoch * steps_per_epoch,
        "loss": logs.get("loss"),
        "val_loss": logs.get("val_loss"),
        "val_perplexity": logs.get("val_perplexity"),
        "tokens_per_s": metrics.tokens_per_second(),
        "wall_s": wall,
        "sample": sample,
    }
