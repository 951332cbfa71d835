"""The fixed set of hooks a model family fills in (after keras-hub's converter interface).

A family is one module of `kzoo.models.families`: its presets, the Hugging Face `model_type`s it
reads, its config mapping both ways, its weight slots, its keras-hub table and what it refuses,
gathered in one frozen `Family` that the module registers. The machinery the hooks feed (the
config reader, slots, checkpoints, safetensors, the keras-hub copy) lives in `kzoo.interop`.

Example:
```python
from kzoo.models.families import get_family
family = get_family("llama")
family.model_types, sorted(family.presets)[:1]   # (('llama',), ['llama_124m'])
```
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# CausalLM arguments that only some families compute, with their "off" values: a family that
# exports a model must refuse any of these it does not list in `handles`, or the exported
# model would compute something else. getattr: models built before an argument existed.
EXTRAS = {"qk_norm": False, "norm_scale_offset": 0.0, "embedding_scale": None,
          "post_norms": False, "sliding_window": None, "layer_types": None,
          "local_rope_max_wavelength": None, "attention_scale": None}


def extras(model) -> dict:
    """The `EXTRAS` of `model` that are not off."""
    return {k: value for k, off in EXTRAS.items()
            if (value := getattr(model, k, off)) != off}


def refuse_extras(model, family: str, handles=(), to: str = "a transformers model") -> None:
    """One-line ValueError naming the first setting `family`'s model (in transformers, or
    keras-hub with `to`) lacks."""
    for name, value in extras(model).items():
        if name not in handles:
            raise ValueError(f"cannot export to {to}: {family} has no {name}={value!r}")


def export_refusal(what: str):
    raise ValueError(f"cannot export to a transformers model: {what}")


@dataclass(frozen=True)
class Family:
    """One model family's hooks.

    Args:
        name: str. the family's name ("llama").
        model_types: tuple[str, ...]. the Hugging Face `model_type`s it reads.
        args_from_hf: callable. `(fields, model_type, overrides) -> CausalLM args`, reading
            through a `kzoo.interop.hf_fields.Fields` and refusing by name what it cannot
            compute.
        slots: callable. `(model, prefix) -> [Slot]` for every variable but an untied head.
        hf_config: callable or None. `model -> config.json fields` (without the vocabulary,
            tying, dtype and token ids, which every family writes alike); None: never exported.
        matches: callable or None. `model -> bool`: this family's transformers model computes
            what `model` computes (checked before the fallback family).
        fallback: bool. exported to when no other family matches (Llama: its `hf_config`
            then refuses what it lacks).
        prefix: str. the tensor-name prefix of the `...ForCausalLM` checkpoints.
        first_tensor: str. a tensor every checkpoint has, for finding the prefix.
        presets: mapping. preset name -> CausalLM args with a `description`.
        keras_hub_backbones: tuple[str, ...]. keras-hub backbone class names it reads.
        args_from_keras_hub: callable or None. `(backbone, max_sequence_length) -> args`.
        keras_hub_table: callable or None. `model -> [(variable, [keras-hub paths])]`.
        to_keras_hub: callable or None. `(model, dtype) -> backbone`, refusing what it lacks.
        refused_model_types: mapping. `model_type`s of this family kzoo does not read, with
            the one-line reason and what to use instead (Gemma 3's multimodal "gemma3").
        layouts: mapping. layout name ("fsdp", "tensor_parallel") -> rule
            `(kzoo.training.plan.Variable, model_size) -> axes` replacing the shared rule of
            `kzoo.training.layouts.SHARED_RULES` for this family; empty: the shared rules.
    """

    name: str
    model_types: tuple[str, ...]
    args_from_hf: Callable
    slots: Callable
    hf_config: Callable | None = None
    matches: Callable | None = None
    fallback: bool = False
    prefix: str = "model."
    first_tensor: str = "embed_tokens.weight"
    presets: Mapping = field(default_factory=dict)
    keras_hub_backbones: tuple[str, ...] = ()
    args_from_keras_hub: Callable | None = None
    keras_hub_table: Callable | None = None
    to_keras_hub: Callable | None = None
    refused_model_types: Mapping = field(default_factory=dict)
    layouts: Mapping = field(default_factory=dict)
