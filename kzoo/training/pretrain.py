"""Pre-training for next-token prediction with `model.fit`: `pretrain(config)`. Its config
schema (`PretrainConfig` and its sections) lives in `kzoo.training.pretrain_config` and is
importable from here.

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

import json
import math
import shutil
import time

import keras
import numpy as np

from kzoo._quiet import set_random_seed
from kzoo.data import check_token_counts, eval_dataset, load_documents, split_tokens
from kzoo.data import train_dataset as make_train_dataset
from kzoo.data.pipeline import eval_windows
from kzoo.tokenizers import check_vocab, load_tokenizer, train_tokenizer
from kzoo.training import callbacks as cb
from kzoo.training.checkpoints import is_sharded, restore_checkpoint
from kzoo.training.config import rerun_header, save_config
from kzoo.training.distribute import (
    KerasStrategy,
    get_strategy,
    host_callbacks,
    is_chief,
    is_tf_distributed,
    lay_out,
    on_host,
    process_slice,
    run_scope,
)
from kzoo.training.evaluation import EvalConfig, RecipeEval, compare
from kzoo.training.layouts import LAYOUTS, family_of
from kzoo.training.optimizers import build_adamw
from kzoo.training.precision import PRECISIONS, warn_if_slower
from kzoo.training.pretrain_config import (  # the schema, importable from here as before
    DataConfig,
    ModelConfig,
    PretrainConfig,
    SampleConfig,
    TokenizerConfig,
    TrainConfig,
    _validate,
)
from kzoo.training.recipe import compile_for_backend
from kzoo.training.resume import check_plan, interval_plan, note_sharding, resume_point
from kzoo.training.run_folder import RunDir, RunFolderError, open_run
from kzoo.training.schedules import WarmupSchedule

__all__ = ["DataConfig", "ModelConfig", "PretrainConfig", "SampleConfig", "TokenizerConfig",
           "TrainConfig", "build_model", "pretrain"]


def _load_tokens(config: PretrainConfig, run: RunDir, resume: bool):
    """The tokenizer, the training and validation streams, and the document starts of an
    in-memory training stream for bos_aligned packing (None otherwise)."""
    d = config.data
    if d.prepared:  # the folder's tokenizer, which the run's (or tokenizer.path) must equal
        from kzoo.data.shards import open_prepared

        must_equal = ([(run.tokenizer, f"the run {run.root}")] if resume else
                      [(config.tokenizer.path, f"tokenizer.path {config.tokenizer.path}")]
                      if config.tokenizer.path else [])
        tokenizer, train_tokens, val_tokens = open_prepared(d.prepared, d.verify, must_equal)
        check_token_counts(train_tokens, val_tokens, config.train.block_size,
                           config.train.batch_size)
        return tokenizer, train_tokens, val_tokens, None
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
    starts = None
    if d.packing == "bos_aligned":  # each document starts after an end-of-text id
        starts = np.concatenate([[0], np.flatnonzero(train_tokens == tokenizer.eot_id) + 1])
    return tokenizer, train_tokens, val_tokens, starts


def build_model(config: PretrainConfig, vocab_size: int):
    """Build (or load) the model of `config.model` for a tokenizer with `vocab_size` ids."""
    from kzoo.models import CausalLM
    from kzoo.models.loading import load_model_file

    m = config.model
    if m.init_from:  # safe mode; a broken file is one line naming it
        model = load_model_file(m.init_from, compile=False, expect=CausalLM)
        check_vocab_size = model.vocab_size
        where = f"the model {m.init_from}"
    else:
        args = dict(m.args)
        args.setdefault("vocab_size", vocab_size)
        policy = PRECISIONS[config.train.precision]
        if policy is not None:
            args["dtype"] = policy
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
    compile_for_backend(model, t.jit_compile, optimizer=optimizer,
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

    Returns a dict with `run_dir`, `steps`, `loss`, `val_loss`, `val_perplexity`, `eval`,
    `tokens_per_s`, `resumed_from`, `wall_s` and `sample`.

    Raises:
        ValueError: bad config or data, or a run folder this run must not use (nothing is
            written to the run folder, and one this call created is removed).
        cb.NaNLossError: the loss became NaN/inf or exploded; the last good backup is kept.
    """
    _validate(config)
    # Before any other TensorFlow or JAX op: collectives and device counts are fixed then.
    strategy = get_strategy(config.train.distribution, config.train.logical_cpus,
                            config.train.mesh)
    replicas = strategy.num_replicas_in_sync
    if isinstance(strategy, KerasStrategy) and config.train.batch_size % replicas:
        raise ValueError(f"train.batch_size={config.train.batch_size} must be divisible by the "
                         f"{replicas} devices of distribution {config.train.distribution!r}")
    chief = is_chief()
    with (open_run(config.run_dir, "pretrain", enabled=chief, resumable=True) as run,
          run_scope(strategy)):
        return _pretrain_in(run, config, strategy, chief)


def _pretrain_in(run: RunDir, config: PretrainConfig, strategy, chief: bool) -> dict:
    t = config.train
    resume, changed, override = (resume_point(config, run) if chief
                                 else (run.has_checkpoint(), {}, False))
    evaluation = RecipeEval(config.eval if chief else EvalConfig())  # tasks checked first
    tokenizer, train_tokens, val_tokens, doc_starts = _load_tokens(config, run, resume)
    set_random_seed(config.seed)  # same initial weights for the same seed

    m = config.model
    if t.distribution in LAYOUTS:  # sharded layouts need the weights' shapes before they exist
        from kzoo.models import get_preset

        lay_out(strategy, m.init_from or {**get_preset(m.preset), "vocab_size":
                                          tokenizer.vocab_size, **m.args}, family_of(m.preset))
    with strategy.scope():
        model = build_model(config, tokenizer.vocab_size)
        check_vocab(tokenizer, model.vocab_size)
        _compile(model, config)
        model.optimizer.build(model.trainable_variables)  # slots created under the strategy
        state = (restore_checkpoint(model, run.backup) if resume else None) or {}
    if chief and not m.init_from:  # one line when bfloat16 is measured slower here
        warn_if_slower(config.train.precision, config.train.batch_size * config.train.block_size,
                       model.hidden_dim)
    note_sharding(state, strategy, changed if resume else None)  # resharded: in resumes.jsonl
    start = cb.global_step(model)
    if resume and start != state.get("step"):
        raise RunFolderError(f"{run.backup}: the checkpoint of step {state.get('step')} "
                             f"holds optimizer step {start}; it is not a kzoo checkpoint")
    if start > t.steps:
        raise ValueError(f"{run.root} is at step {start}, past train.steps={t.steps}; "
                         "raise train.steps (with --set resume=override) to continue")
    if evaluation.enabled and "eval_before" not in state and start == 0:
        with on_host(model):  # several processes: the chief scores whole weights alone
            state["eval_before"] = evaluation.score(model, tokenizer)  # kept in every backup
    plan = interval_plan(start, t.steps, t.eval_interval)
    check_plan(plan, start, t.steps_per_execution)
    if chief and not resume:
        save_config(config, run.config, header=rerun_header("pretrain", run.config))
        shutil.rmtree(run.tokenizer, ignore_errors=True)  # a failed start's (this recipe's)
        tokenizer.save(run.tokenizer)
    elif chief and plan:
        run.log_resume(start, changed, override=override)
        if changed:  # config.yaml describes the model in the folder: now these settings
            save_config(config, run.config, header=rerun_header("pretrain", run.config))
    if not plan:
        print(f"{run.root} is already complete at step {start}; nothing to train", flush=True)
        with on_host(model):
            return _finish(run, config, model, tokenizer, state.get("logs", {}), chief,
                           resumed_from=start, wall=0.0, tokens_per_s=None,
                           write=chief and not run.model.is_file(),
                           evaluation=(evaluation, state.get("eval_before")))

    val_ds = _validation(strategy, config, val_tokens)
    if _distributed(strategy, config):
        _build_for_strategy(model, strategy, config, val_tokens)
    state.setdefault("best", math.inf)
    metrics = cb.IntervalMetrics(t.eval_interval, t.batch_size * t.block_size)
    guard = cb.TrainingGuard(t.max_loss_factor, state.get("reference_loss"))
    # Order matters: logs first, then the model files, the checkpoint last. A kill between
    # them leaves rows and files ahead of the checkpoint, which the resume redoes exactly.
    callbacks = [guard, metrics]
    if chief:
        callbacks.append(cb.MetricsLog(run.metrics, resume_step=start if resume else None))
        if t.tensorboard and _has_tensorboard():
            callbacks.append(keras.callbacks.TensorBoard(str(run.tensorboard), write_graph=False))
    # State split over devices is checkpointed shard by shard, every process writing its own
    # (kzoo.training.checkpoints): that backup runs on every process, outside the gather.
    sharded = is_sharded(model)
    backup = cb.Backup(run.backup, state, guard=guard, keep=t.keep_backups,
                       enabled=chief or sharded)
    writers = [  # several processes: all gather the weights to host, the chief writes
        cb.SaveBest(run.best_model, state, guard=guard, enabled=chief),
        *([] if sharded else [backup]),
    ]
    if chief and config.sample.every_interval:
        s = config.sample
        writers.append(cb.PrintSample(tokenizer, s.prompt, s.max_new_tokens, s.temperature,
                                      s.top_k, guard=guard))
    callbacks += host_callbacks(writers) + ([backup] if sharded else [])
    if start:
        print(f"Resuming {run.root} from step {start}", flush=True)
    began = time.perf_counter()
    logs = {}
    for epochs, length in plan:
        train_ds = _training(strategy, config, train_tokens, cb.global_step(model), doc_starts)
        history = model.fit(train_ds, epochs=epochs, steps_per_epoch=length,
                            validation_data=val_ds, validation_steps=t.val_batches,
                            callbacks=callbacks, shuffle=False, verbose=t.verbose)
        logs = {k: v[-1] for k, v in history.history.items()} if history.history else logs
        if guard.tripped:
            break
    wall = time.perf_counter() - began
    if guard.tripped:
        checkpoint = _latest_name(run)
        raise cb.NaNLossError(
            f"{guard.reason} at step {guard.stopped_step}; training stopped. "
            + (f"The last good checkpoint {checkpoint} is kept; rerun to resume from it "
               "(lower train.learning_rate first, with --set resume=override)."
               if checkpoint else "No checkpoint was saved yet.")
        )
    with on_host(model):
        return _finish(run, config, model, tokenizer, logs, chief, resumed_from=start,
                       wall=wall, tokens_per_s=metrics.tokens_per_second(), write=chief,
                       evaluation=(evaluation, state.get("eval_before")))


def _latest_name(run: RunDir):
    from kzoo.training.checkpoints import list_checkpoints

    found = list_checkpoints(run.backup)
    return found[0] if found else None


def _finish(run, config, model, tokenizer, logs, chief, resumed_from, wall, tokens_per_s,
            write, evaluation):
    sample, (recipe_eval, before) = "", evaluation
    compared = compare(before, recipe_eval.score(model, tokenizer)) if chief else None
    if compared is not None:
        (run.root / "metrics.json").write_text(json.dumps({"eval": compared}, indent=1))
    if write:
        cb.atomic_save_model(model, run.model)
        cb.plot_metrics(run.metrics, run.loss_plot)
        run.mark("pretrain", "finished")
    if chief:
        s = config.sample
        sample = cb.generate_text(model, tokenizer, s.prompt, s.max_new_tokens, s.temperature,
                                  s.top_k, seed=config.seed)
        print(f"\n=== sample from {run.model} ===\n{sample}\n", flush=True)
    return {
        "run_dir": str(run.root),
        "steps": config.train.steps,
        "resumed_from": resumed_from,
        "loss": logs.get("loss"),
        "val_loss": logs.get("val_loss"),
        "val_perplexity": logs.get("val_perplexity"),
        "tokens_per_s": tokens_per_s,
        "wall_s": wall,
        "sample": sample,
        "eval": compared,
    }


def _validation(strategy, config: PretrainConfig, val_tokens):
    """The validation windows: the same `val_batches` batches at every interval."""
    t = config.train

    def val_fn(ctx=None):
        # Repeated: each validation takes exactly val_batches, so every one sees the same
        # windows, and no iterator runs dry (distributed iterators cannot restart).
        return eval_dataset(val_tokens, t.block_size, t.batch_size, t.val_batches,
                            config.seed + 1, input_context=ctx).repeat()

    if _distributed(strategy, config):
        return strategy.distribute_datasets_from_function(val_fn)
    # One device (or this process's slice of each batch, under several processes): Keras
    # makes a new iterator for every validation; over in-memory windows that costs nothing,
    # where the cached pipeline above took about a second to tear down each time (baby
    # config, 200 batches).
    return eval_windows(val_tokens, t.block_size, t.batch_size, t.val_batches, config.seed + 1,
                        input_context=process_slice(strategy))


def _training(strategy, config: PretrainConfig, train_tokens, start_step: int, doc_starts):
    t = config.train

    def train_fn(ctx=None):
        return make_train_dataset(train_tokens, t.block_size, t.batch_size, config.seed,
                                  start_step=start_step, input_context=ctx,
                                  packing=config.data.packing, doc_starts=doc_starts)

    if not _distributed(strategy, config):
        return train_fn(process_slice(strategy))  # None on one process: every row
    return strategy.distribute_datasets_from_function(train_fn)


def _build_for_strategy(model, strategy, config: PretrainConfig, val_tokens) -> None:
    # Keras 3 `fit` under a strategy builds the model from a first batch averaged over
    # replicas (int token ids turn into floats; under MultiWorkerMirroredStrategy the
    # average fails). Build model, loss and metrics here from a plain batch, then skip
    # that step.
    t = config.train
    x, y = next(iter(eval_dataset(val_tokens, t.block_size, t.batch_size, 1, config.seed + 1)))
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


def _distributed(strategy, config: PretrainConfig) -> bool:
    # A Keras distribution (JAX) splits the plain global batches itself: False there.
    return is_tf_distributed(strategy, config.train.distribution)
