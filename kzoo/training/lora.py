"""The `lora:` section of a fine-tuning recipe's config, and the one call that applies it.

A recipe adds `lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)` to its config
and calls `apply_lora_config(model, cfg.lora)` after building (or loading) the model and
before compiling it. With `enabled: false` (the default) the model is left as it is.

YAML:
```yaml
lora:
  enabled: true
  rank: 8
  alpha: 16            # null: alpha = rank (scale 1)
  targets: [all]       # or query_key_value, attention_output, up, down, attention, ffn
  quantize: int8       # optional: int8 base weights, float32 adapters (QLoRA-style)
```

Example:
```python
from kzoo.models import CausalLM
from kzoo.training.lora import LoRAConfig, apply_lora_config
model = CausalLM.from_preset("gpt_nano")
apply_lora_config(model, LoRAConfig(enabled=True, rank=8))
```
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal

from kzoo.models.lora import TARGET_GROUPS, TARGETS, enable_lora
from kzoo.training.config import Check, between, checked

_VALID_TARGETS = list(TARGETS) + list(TARGET_GROUPS)


@dataclasses.dataclass
class LoRAConfig:
    """LoRA settings of a fine-tuning run.

    Args:
        enabled: bool. add adapters and train only them.
        rank: int. adapter rank r.
        alpha: float or None. updates are scaled by alpha / rank; None: alpha = rank.
        targets: list[str]. Dense roles or groups (see `kzoo.models.lora.TARGETS`).
        dropout: float. dropout on the adapters' input in training (0: none).
        quantize: "int8" or None. quantize the frozen base weights to int8 first.

    Example:
    ```python
    LoRAConfig(enabled=True, rank=4, targets=["attention"])
    ```
    """

    enabled: bool = False
    rank: int = checked(8, "positive")
    alpha: float | None = checked(None, "positive")
    targets: list[str] = checked(
        check=Check(f"must be one of {_VALID_TARGETS}", lambda v: v in _VALID_TARGETS),
        default_factory=lambda: ["all"])
    dropout: float = checked(0.0, between(0, 1, high_open=True))
    quantize: Literal["int8"] | None = None


def apply_lora_config(model, config: LoRAConfig):
    """Apply `config` to `model` (a `CausalLM`, or a reward model's backbone); returns it.

    Example:
    ```python
    apply_lora_config(rm.backbone, cfg.lora)   # the reward head stays trainable
    ```
    """
    if not config.enabled:
        return model
    if config.quantize == "int8":
        with warnings.catch_warnings():
            # Keras names every layer without a quantized form (norms, embeddings, dropout).
            warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
            model.quantize("int8")
    elif config.quantize is not None:
        raise ValueError(f"Unknown `lora.quantize`: {config.quantize!r}. Valid values: "
                         "['int8', None]")
    return enable_lora(model, config.rank, config.alpha, config.targets, config.dropout)
