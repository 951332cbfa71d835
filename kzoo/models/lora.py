"""LoRA adapters on the Dense projections of kzoo models, built on Keras' own `Dense.enable_lora`.

Each targeted `keras.layers.Dense` gets `lora_kernel_a` (in, rank) and `lora_kernel_b` (rank,
out), float32, A drawn `he_uniform` and B zeros, so a fresh adapter changes nothing. kzoo's
projections (`kzoo.layers.projection.Projection`) compute `x @ W + (alpha / rank) * (x @ A) @ B
+ b`, never the full-size `W + scale * A @ B` Keras' float `Dense` builds (and its full-size
gradient), and can drop out the adapter input (`dropout`); the int8 path is Keras'
`int8(x) @ W_q + (alpha / rank) * (x @ A) @ B`. After `enable_lora` only the adapters are
trainable: embeddings, the output head, norms, biases and the base kernels are frozen.

The targets are the roles of the Dense sublayers: "query_key_value" (the fused q/k/v projection),
"attention_output", "up" (the feed-forward's first projection; gate and up fused when gated) and
"down"; the groups "attention", "ffn" and "all" name several.

Saving:
- `save_lora(layer, path)` writes the adapters alone (a small safetensors file whose metadata
  holds rank, alpha and targets); `load_lora` puts them on a model of the same shape.
- `model.save("x.keras")` MERGES: Keras' `Dense.save_own_variables` writes `W + scale * A @ B`
  as the kernel and no adapters, and `CausalLM`'s config has no LoRA, so the file loads (in safe
  mode) as a plain model with the same logits. Keep the adapters with `save_lora`.
- `load_weights` on a model with adapters is refused: Keras would load merged kernels and zero
  both A and B, after which the adapters get no gradient.

The adapters in memory (targets, `enable_lora`, `lora_disabled`, merging) are
`kzoo.models.lora_adapters`, their own file (`save_lora`, `load_lora`) `kzoo.models.lora_files`;
this module holds `CausalLM`'s `LoRAMixin` and re-exports every name of both.

Example:
```python
from kzoo.models import CausalLM
model = CausalLM.from_preset("gpt_nano")
model.enable_lora(rank=8, targets="all")
# ... compile and fit: only the adapters train ...
model.save_lora("adapters.safetensors")
model.merge_lora()          # fold the adapters into the kernels; the model is plain again
```
"""

from __future__ import annotations

from pathlib import Path

from kzoo.models.lora_adapters import (
    TARGET_GROUPS,
    TARGETS,
    LoRASpec,
    adapter_layers,
    adapter_weights,
    effective_kernel,
    enable_lora,
    lora_disabled,
    lora_spec,
    merge_lora,
    merged_copy,
    resolve_targets,
    target_layers,
)
from kzoo.models.lora_files import FILE_FORMAT, load_lora, read_lora_settings, save_lora

# Re-exported: this is the documented home that models, recipes and tests import from.
__all__ = ["FILE_FORMAT", "TARGETS", "TARGET_GROUPS", "LoRAMixin", "LoRASpec", "adapter_layers",
           "adapter_weights", "effective_kernel", "enable_lora", "load_lora", "lora_disabled",
           "lora_spec", "merge_lora", "merged_copy", "read_lora_settings", "resolve_targets",
           "save_lora", "target_layers"]


class LoRAMixin:
    """LoRA methods of `CausalLM` (see `kzoo.models.lora`)."""

    def enable_lora(self, rank: int, alpha: float | None = None, targets="all",
                    dropout: float = 0.0):
        """Add LoRA adapters and freeze the rest (see `kzoo.models.lora.enable_lora`).

        Example:
        ```python
        model.enable_lora(8, alpha=16, targets=("query_key_value", "attention_output"))
        ```
        """
        return enable_lora(self, rank, alpha, targets, dropout)

    @property
    def lora_spec(self) -> LoRASpec | None:
        """The adapters' settings, or None without adapters."""
        return lora_spec(self)

    def merge_lora(self):
        """Fold the adapters into the kernels and remove them (see `merge_lora`)."""
        return merge_lora(self)

    def merged_copy(self):
        """A float copy with the adapters folded in, int8 bases dequantized (`merged_copy`)."""
        return merged_copy(self)

    def lora_disabled(self):
        """Context manager: run as the base model, adapters skipped (`lora_disabled`)."""
        return lora_disabled(self)

    def save_lora(self, path) -> Path:
        """Write only the adapters to a safetensors file (see `save_lora`)."""
        return save_lora(self, path)

    def load_lora(self, path):
        """Load adapters written by `save_lora` (see `load_lora`)."""
        return load_lora(self, path)

    def load_weights(self, filepath, *args, **kwargs):
        if lora_spec(self) is not None:
            raise ValueError(
                f"load_weights({str(filepath)!r}) on a model with LoRA adapters: Keras would "
                "zero them (A and B), so they could never train again. Load the weights "
                "first, then enable_lora, and restore adapters with load_lora.")
        return super().load_weights(filepath, *args, **kwargs)
