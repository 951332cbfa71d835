"""What the fine-tuning recipe scripts share: their data and model config sections and their
command line (`--config FILE --set key=value ...`, exit code 2 on bad input, 3 on a NaN stop).

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
import dataclasses
import json
import sys
from typing import Any

from kzoo.training.config import at_least, checked


class DivergedError(RuntimeError):
    """Training stopped on a non-finite or exploding loss (a recipe's exit code 3)."""


def backend_jit_compile(jit_compile: bool) -> bool:
    """The `jit_compile` to pass to `model.compile` for a recipe's `train.jit_compile`: itself
    on TensorFlow and JAX (XLA), False on PyTorch (`kzoo.backend.train_jit_compile`: Keras'
    torch `jit_compile` is `torch.compile`, which re-traces the train step).

    Args:
        jit_compile: bool. what the config asks for.

    Example:
    ```python
    model.compile(optimizer="adamw", jit_compile=backend_jit_compile(True))
    ```
    """
    from kzoo import backend

    return backend.train_jit_compile(jit_compile)


def diverged(guard, saved: str) -> DivergedError:
    """The error a fine-tuning recipe raises after `guard` (a `NaNGuard`) stopped it.

    Args:
        guard: kzoo.training.NaNGuard. the guard that stopped training.
        saved: str. what the run kept, e.g. "the last good weights are in X".
    """
    epoch, step = guard.stopped_at
    return DivergedError(f"training diverged ({guard.reason}) at epoch {epoch + 1}, step "
                         f"{step + 1}; {saved}; lower train.learning_rate and rerun")


@dataclasses.dataclass
class FineTuneData:
    """The `data:` section of the SFT, DPO and reward recipes (pairs by default)."""

    path: str = "../shared/data/instruction-preference.json"  # .json/.jsonl or tfds:NAME
    template: str = "alpaca"
    max_length: int = checked(256, at_least(2))  # prompt + response + end-of-text
    max_prompt_length: int | None = checked(None, "positive")
    validation_fraction: float = checked(0.1, "fraction")
    split_seed: int = 0
    strict: bool = False


@dataclasses.dataclass
class FineTuneModel:
    """The `model:` section of the SFT, DPO and reward recipes."""

    preset: str = "gpt_baby"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)  # CausalLM overrides
    # The model to start from: a .keras file, a kzoo run folder (its model.keras and
    # tokenizer/), a Hugging Face folder or a keras-hub preset folder (kzoo.models.sources).
    init_from: str | None = None
    # "auto": the tokenizer that came with init_from ("byte" without one); "byte"; or a saved
    # tokenizer folder (kzoo's or a Hugging Face layout).
    tokenizer: str = "auto"


@dataclasses.dataclass
class MemoryOptions:
    """The memory levers of the SFT, DPO and reward recipes' `train:` section (mixed in).

    `gradient_accumulation_steps`: the optimizer sums the gradients of this many batches and
    updates once (Keras' own accumulation): the memory of one batch, the step of a larger one.
    `remat`: recompute each transformer block's forward pass in the backward pass instead of
    keeping its activations (needs dropout 0).
    """

    gradient_accumulation_steps: int = checked(1, "positive")
    remat: bool = False


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
