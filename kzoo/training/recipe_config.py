"""The config sections the fine-tuning recipes share, and the choice of their reference model.

`FineTuneData` (`data:`) and `FineTuneModel` (`model:`) are the SFT, DPO and reward recipes'
sections; `PreferenceTrainConfig` the `train:` of DPO, KTO and ORPO, with `MemoryOptions`
(gradient accumulation, remat) mixed into every tuning recipe's `train:`. `reference_mode`
resolves a `<section>.reference` of `REFERENCE_MODES`. Every name is importable from
`kzoo.training.recipe`, which runs the recipes on them.

Example:

>>> from kzoo.training.recipe_config import FineTuneData, reference_mode
>>> FineTuneData().template
'alpaca'
>>> reference_mode("dpo", "auto", lora_enabled=False)
'precomputed'
"""

import dataclasses
from typing import Any

from kzoo.training.config import at_least, checked


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


@dataclasses.dataclass
class PreferenceTrainConfig(MemoryOptions):
    """The `train:` section of the DPO, KTO and ORPO recipes."""

    epochs: int = checked(2, "positive")
    batch_size: int = checked(8, "positive")  # pairs (KTO: completions) per step
    learning_rate: float = checked(1e-4, "positive")
    # steps between metrics.csv rows; None: once per epoch
    eval_interval: int | None = checked(None, "positive")
    verbose: int = 2
    jit_compile: bool = True
    max_loss_factor: float | None = 4.0  # stop when the loss exceeds this x its first value


REFERENCE_MODES = ("auto", "precomputed", "copy", "adapters_off")


def reference_mode(section: str, mode: str, lora_enabled: bool) -> str:
    """The reference a recipe's `<section>.reference` asks for, "auto" resolved: "adapters_off"
    with LoRA (the same network, adapters skipped), else "precomputed" (log-probs scored once
    before training); "copy" is a frozen second model. One `ValueError` line when bad.

    Args:
        section: str. the config section, for the message ("dpo").
        mode: str. one of `REFERENCE_MODES`.
        lora_enabled: bool. the recipe's `lora.enabled`.

    Example:
    ```python
    reference_mode("dpo", "auto", lora_enabled=True)   # 'adapters_off'
    ```
    """
    if mode not in REFERENCE_MODES:
        raise ValueError(f"{section}.reference must be one of {list(REFERENCE_MODES)}. "
                         f"Received: {mode!r}")
    if mode == "adapters_off" and not lora_enabled:
        raise ValueError(f"{section}.reference: adapters_off needs lora.enabled: true (the "
                         "reference is the network with its LoRA adapters skipped)")
    if mode == "auto":
        return "adapters_off" if lora_enabled else "precomputed"
    return mode
