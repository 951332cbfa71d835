"""What the fine-tuning recipe scripts share: the fit-in-intervals loop with its divergence
guard, loading and scoring preference pairs, saving the tuned model, and their command line
(`--config FILE --set key=value ...`, exit code 2 on bad input, 3 on a NaN stop:
`DivergedError`). Their shared config sections (data, model, preference `train:`) and the
reference-mode choice live in `kzoo.training.recipe_config`, importable from here too.

Example:
```python
import dataclasses
from kzoo.training.recipe import FineTuneData, FineTuneModel

@dataclasses.dataclass
class MyConfig:
    run_dir: str = "runs/mine"
    data: FineTuneData = dataclasses.field(default_factory=FineTuneData)
    model: FineTuneModel = dataclasses.field(default_factory=FineTuneModel)
```
"""

import argparse
import json
import math
import sys

from kzoo.training.recipe_config import (  # the shared sections, importable from here
    REFERENCE_MODES,
    FineTuneData,
    FineTuneModel,
    MemoryOptions,
    PreferenceTrainConfig,
    reference_mode,
)

__all__ = ["DivergedError", "FineTuneData", "FineTuneModel", "MemoryOptions",
           "PreferenceTrainConfig", "REFERENCE_MODES", "backend_jit_compile",
           "compile_for_backend", "diverged", "error_line", "finish_tuning", "fit_in_intervals",
           "load_pairs", "pairs_result", "prepare_tuning", "reference_mode", "run_recipe",
           "save_tuned", "tune_on_pairs", "tuning_guard", "tuning_optimizer"]


class DivergedError(RuntimeError):
    """Training stopped on a non-finite or exploding loss (a recipe's exit code 3)."""


def backend_jit_compile(jit_compile: bool) -> bool:
    """The `jit_compile` to pass to `model.compile` for a recipe's `train.jit_compile`: itself
    on TensorFlow and JAX (XLA), False on PyTorch (`kzoo.backend.train_jit_compile`: Keras'
    torch `jit_compile` is `torch.compile`, which re-traces the train step; kzoo compiles the
    step there itself, see `compile_for_backend`).

    Args:
        jit_compile: bool. what the config asks for.

    Example:
    ```python
    model.compile(optimizer="adamw", jit_compile=backend_jit_compile(True))
    ```
    """
    from kzoo import backend

    return backend.train_jit_compile(jit_compile)


def compile_for_backend(model, jit_compile: bool, **compile_args) -> None:
    """`model.compile(**compile_args)` with a recipe's `train.jit_compile`: XLA on TensorFlow
    and JAX; on PyTorch kzoo's compiled train step (one recorded graph per batch shape,
    `kzoo.backend.compile_train_step`), or Keras' eager step when `jit_compile` is false.

    Args:
        model: keras.Model. the model to compile.
        jit_compile: bool. the config's `train.jit_compile`.
        **compile_args: passed to `model.compile` (optimizer, loss, steps_per_execution...).

    Example:
    ```python
    compile_for_backend(model, True, optimizer="adamw")
    ```
    """
    from kzoo import backend

    model.compile(jit_compile=backend_jit_compile(jit_compile), **compile_args)
    backend.compile_train_step(model, jit_compile)


def diverged(guard, saved: str) -> DivergedError:
    """The error a fine-tuning recipe raises after `guard` (a `NaNGuard`) stopped it.

    Args:
        guard: kzoo.training.NaNGuard. the guard that stopped training.
        saved: str. what the run kept, e.g. "the last good weights are in X".
    """
    epoch, step = guard.stopped_at
    return DivergedError(f"training diverged ({guard.reason}) at epoch {epoch + 1}, step "
                         f"{step + 1}; {saved}; lower train.learning_rate and rerun")


def tuning_guard(model, run_dir, train):
    """The divergence guard of a fit-in-intervals run: a `NaNGuard` on `model` that keeps its
    last good weights in `run_dir/policy.weights.h5` and stops past `train.max_loss_factor`.

    Example:
    ```python
    guard = tuning_guard(policy, run_dir, config.train)
    ```
    """
    from kzoo.training.guard import NaNGuard

    return NaNGuard(model, checkpoint_path=str(run_dir.root / "policy.weights.h5"),
                    max_loss_factor=train.max_loss_factor)


def fit_in_intervals(model, train_ds, val_ds, rows: int, train, guard, metrics_path):
    """`model.fit` for `train.epochs` passes over `rows` rows, in Keras "epochs" of
    `train.eval_interval` steps (one pass without it): one held-out evaluation and one
    metrics.csv row (with its global "step") per interval. `train_ds` is repeated.

    Args:
        model: keras.Model. the compiled alignment model.
        train_ds: tf.data.Dataset. one pass of training batches of `train.batch_size`.
        val_ds: tf.data.Dataset. the held-out batches.
        rows: int. the training rows (pairs) in one pass.
        train: PreferenceTrainConfig. the recipe's `train:` section.
        guard: keras.callbacks.Callback. the divergence guard (`tuning_guard`).
        metrics_path: str | Path. the metrics.csv to write.

    Returns: the Keras `History`.

    Example:
    ```python
    history = fit_in_intervals(model, train_ds, val_ds, len(train["token_ids"]), config.train,
                               guard, run_dir.metrics)
    ```
    """
    import keras

    batches = math.ceil(rows / train.batch_size)
    interval = train.eval_interval or batches
    if interval < 1:
        raise ValueError(f"train.eval_interval must be >= 1. Received: {interval}")
    rounds = math.ceil(train.epochs * batches / interval)  # Keras "epochs" of `interval`
    step = keras.callbacks.LambdaCallback(  # adds the global step before CSVLogger writes
        on_epoch_end=lambda epoch, logs: logs.__setitem__("step", (epoch + 1) * interval))
    return model.fit(train_ds.repeat(), steps_per_epoch=interval, validation_data=val_ds,
                     epochs=rounds, verbose=train.verbose, shuffle=False,
                     callbacks=[guard, step, keras.callbacks.CSVLogger(str(metrics_path))])


def finish_tuning(run_dir, recipe: str, guard, policy) -> None:
    """End a fit-in-intervals run: `DivergedError` when the guard stopped it (the last good
    weights stay in policy.weights.h5), else save the tuned policy and mark the run finished.

    Example:
    ```python
    finish_tuning(run_dir, "orpo", guard, policy)
    ```
    """
    if guard.stopped_at is not None:
        raise diverged(guard, f"the last good weights (after {guard.good_step} good steps) "
                              f"are in {run_dir.root / 'policy.weights.h5'}")
    save_tuned(policy, run_dir.model, run_dir.root / "adapters.safetensors")
    run_dir.mark(recipe, "finished")


def tune_on_pairs(run_dir, config, recipe: str, header: str, build, optimizer=None) -> dict:
    """The whole run of a recipe on preference pairs (DPO, ORPO) in `run_dir`: the pairs
    loaded and split, the model built and compiled, held-out metrics before, the fit in
    intervals under the divergence guard, held-out metrics after, then config.yaml,
    tokenizer/, metrics.json and the tuned policy (`finish_tuning`). Returns metrics.json's
    record.

    Args:
        run_dir: kzoo.training.RunDir. the open run folder.
        config: dataclass. the recipe's config, with `seed`, `data` (FineTuneData), `model`,
            `train` (PreferenceTrainConfig), `lora` and `eval` sections.
        recipe: str. the `kzoo` command, for the run marker.
        header: str. config.yaml's header, `rerun_header(recipe, run_dir.config)` (called in
            the recipe, so a test can read each recipe's own command off its source).
        build: callable. `build(policy, train, val) -> (model, policy)`: the alignment model
            and the policy it tunes; it applies `prepare_tuning` itself (a frozen reference
            copy is taken before) and may add keys to the `train` / `val` arrays.
        optimizer: keras optimizer class or None (AdamW).

    Example:
    ```python
    tune_on_pairs(run_dir, config, "orpo", rerun_header("orpo", run_dir.config),
                  lambda policy, train, val: (ORPOModel(policy), policy))
    ```
    """
    from kzoo._quiet import set_random_seed
    from kzoo.data.preference import preference_dataset
    from kzoo.training.config import save_config
    from kzoo.training.evaluation import RecipeEval, compare

    set_random_seed(config.seed)
    evaluation = RecipeEval(config.eval)  # tasks and their data checked before any work
    data, train_cfg = config.data, config.train
    tokenizer, policy, train, val, counts = load_pairs(data, config.model)
    model, policy = build(policy, train, val)
    compile_for_backend(model, train_cfg.jit_compile,
                        optimizer=tuning_optimizer(train_cfg, optimizer))
    val_ds = preference_dataset(val, train_cfg.batch_size, shuffle=False)
    before = model.evaluate(val_ds, verbose=0, return_dict=True)
    eval_before = evaluation.score(policy, tokenizer)
    guard = tuning_guard(policy, run_dir, train_cfg)
    train_ds = preference_dataset(train, train_cfg.batch_size, seed=config.seed)
    history = fit_in_intervals(model, train_ds, val_ds, len(train["token_ids"]), train_cfg,
                               guard, run_dir.metrics)
    after = model.evaluate(val_ds, verbose=0, return_dict=True)
    save_config(config, run_dir.config, header=header)
    tokenizer.save(run_dir.tokenizer)
    result = {**pairs_result(data, train, val, counts, before, after, history),
              "stopped_on_nan": guard.stopped_at,
              "eval": compare(eval_before, evaluation.score(policy, tokenizer))}
    (run_dir.root / "metrics.json").write_text(json.dumps(result, indent=1))
    finish_tuning(run_dir, recipe, guard, policy)
    return result


def prepare_tuning(model, lora, train: MemoryOptions):
    """Apply a recipe's `lora:` section and `train.remat` to the model it tunes; returns it.

    Args:
        model: CausalLM. the model (a reward model's backbone) to tune.
        lora: kzoo.training.lora.LoRAConfig. adapters (and an int8 base) when `enabled`.
        train: MemoryOptions. the recipe's `train:` section.

    Example:
    ```python
    policy = prepare_tuning(policy, config.lora, config.train)
    ```
    """
    from kzoo.training.lora import apply_lora_config

    model.remat = train.remat
    return apply_lora_config(model, lora)


def tuning_optimizer(train, optimizer=None, **kwargs):
    """The optimizer of a tuning recipe: `optimizer` (default AdamW) at
    `train.learning_rate`, accumulating `train.gradient_accumulation_steps` batches.

    Example:
    ```python
    opt = tuning_optimizer(config.train, weight_decay=0.0)
    ```
    """
    import keras

    steps = train.gradient_accumulation_steps
    return (optimizer or keras.optimizers.AdamW)(
        train.learning_rate, gradient_accumulation_steps=steps if steps > 1 else None, **kwargs)


def save_tuned(model, path, adapters_path=None):
    """Save a tuned model as a plain `.keras` file any later step loads: LoRA adapters folded
    into the kernels (an int8 base dequantized to float), and the adapters on their own at
    `adapters_path` (a small safetensors file) when the model has them.

    Args:
        model: CausalLM or RewardModel. the tuned model.
        path: str | Path. the `.keras` file.
        adapters_path: str | Path or None. where the adapters go.
    """
    from kzoo.alignment.reward import RewardModel
    from kzoo.models.lora import lora_spec

    backbone = model.backbone if isinstance(model, RewardModel) else model
    if lora_spec(backbone) is None:
        model.save(path)
        return
    if adapters_path is not None:
        backbone.save_lora(adapters_path)
    merged = backbone.merged_copy()
    if isinstance(model, RewardModel):
        plain = RewardModel(merged)
        plain.head.set_weights(model.head.get_weights())
        merged = plain
    merged.save(path)


def load_pairs(data: FineTuneData, model: FineTuneModel) -> tuple:
    """What the DPO and reward recipes start from: the tokenizer and model of the `model:`
    section, and the preference pairs of the `data:` section split by prompt and encoded.

    Returns `(tokenizer, model, train, val, counts)`: `train` and `val` as `encode_pairs`
    gives them, `counts` the bad-pair accounting of `read_preference_records`.
    """
    from kzoo.alignment.sft import load_tokenizer_and_model
    from kzoo.data.instruction import split_records
    from kzoo.data.preference import check_encoded_pairs, encode_pairs, read_preference_records

    tokenizer, network = load_tokenizer_and_model(
        model.preset, model.args, model.init_from, model.tokenizer, data.max_length)
    records, counts = read_preference_records(data.path, strict=data.strict)
    train_records, val_records = split_records(records, data.validation_fraction,
                                               data.split_seed)
    train, val = (encode_pairs(rs, tokenizer, data.max_length, data.template,
                               data.max_prompt_length, data.strict)
                  for rs in (train_records, val_records))
    check_encoded_pairs(train, val, data.path, data.max_length)  # naming the file and why
    return tokenizer, network, train, val, counts


def pairs_result(data: FineTuneData, train: dict, val: dict, counts: dict, before: dict,
                 after: dict, history) -> dict:
    """The metrics.json record of a run on `load_pairs` data: split, bad pairs, held-out
    metrics before and after, and the Keras history."""
    return {
        "split": {"train_pairs": len(train["token_ids"]), "validation_pairs": len(val["token_ids"]),
                  "validation_fraction": data.validation_fraction, "split_seed": data.split_seed},
        "bad_pairs": {**counts, "prompt_too_long": train["skipped"] + val["skipped"]},
        "held_out_before": {k: float(v) for k, v in before.items()},
        "held_out_after": {k: float(v) for k, v in after.items()},
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
    }


def _summary(result: dict) -> str:
    return "result: " + json.dumps({k: v for k, v in result.items() if k != "history"})


def error_line(error: BaseException) -> str:
    """`error: MESSAGE` on one line, however many lines the message had (what the recipes
    print on stderr before exiting with code 2 or 3).

    Args:
        error: BaseException. the error to report.

    Example:
    ```python
    error_line(ValueError("c.yaml: bad\n  more"))   # 'error: c.yaml: bad more'
    ```
    """
    text = " ".join(str(error).split()) or type(error).__name__
    return f"error: {text}"


def run_recipe(doc: str, config_class, run, argv=None, example: str = "train.epochs=1",
               fatal: tuple = (DivergedError,), report=_summary) -> int:
    """Parse the recipe command line, load and validate its config, run it; the exit code.

    Args:
        doc: str. the recipe's docstring (its first line is the `--help` description).
        config_class: dataclass. the recipe's config schema (`kzoo.training.load_config`).
        run: callable. `run(config) -> dict` does the work.
        argv: list of str or None. the arguments (default `sys.argv[1:]`).
        example: str. an override shown in `--help`.
        fatal: tuple of exception classes. errors that stop a run after it started (a NaN
            loss): reported, exit code 3.
        report: callable. turns the result into the text printed at the end.

    Returns 0 on success, 2 on bad input (a `ValueError`: file, key or value named), 3 on a
    `fatal` error; either error is one `error: ...` line on stderr (`error_line`).
    """
    from kzoo.training.config import load_config

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. {example} (repeatable)")
    args = parser.parse_args(argv)
    try:
        result = run(load_config(args.config, config_class, overrides=args.set))
    except ValueError as error:
        print(error_line(error), file=sys.stderr)
        return 2
    except fatal as error:
        print(error_line(error), file=sys.stderr)
        return 3
    print(report(result))
    return 0
