"""The model families kzoo knows, one module each, and the registry that the rest reads.

`kzoo.interop` (Hugging Face and keras-hub conversion), `kzoo.models.presets` and
`kzoo.models.sources` ask this registry; no family name appears outside this package (a test
scans for it). Adding a family is a module with a `FAMILY` and one line in `_MODULES`.

Example:
```python
from kzoo.models.families import family_for_model_type, list_families
[f.name for f in list_families()]        # ['gpt2', 'llama', 'mistral', 'qwen2', ...]
family_for_model_type("mistral").name    # 'mistral'
```
"""

from __future__ import annotations

import importlib

from kzoo.models.families.base import Family

# The family modules, in the order presets are listed.
_MODULES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma3")
_REGISTRY: dict[str, Family] = {}
_LOADED: list = []


def register_family(family: Family) -> Family:
    """Add `family` to the registry (a second family of the same name or model_type is an
    error: one of them would never be reached)."""
    if family.name in _REGISTRY:
        raise ValueError(f"family {family.name!r} is already registered")
    taken = {t for f in _REGISTRY.values() for t in f.model_types} & set(family.model_types)
    if taken:
        raise ValueError(f"model_type(s) {sorted(taken)} already belong to another family")
    _REGISTRY[family.name] = family
    return family


def _load() -> None:
    # The built-in families first, on first use (a family registered from outside before
    # that comes after them).
    if not _LOADED:
        _LOADED.append(True)
        outside = dict(_REGISTRY)
        _REGISTRY.clear()
        for module in _MODULES:
            register_family(importlib.import_module(f"kzoo.models.families.{module}").FAMILY)
        for family in outside.values():
            register_family(family)


def list_families() -> list[Family]:
    """Every registered family, in registration order."""
    _load()
    return list(_REGISTRY.values())


def get_family(name: str) -> Family:
    """The family called `name` ("gpt2", "llama", ...)."""
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model family {name!r}; known: {list(_REGISTRY)}")
    return _REGISTRY[name]


def supported_model_types() -> tuple[str, ...]:
    """Every Hugging Face `model_type` some family reads, in registration order."""
    return tuple(t for f in list_families() for t in f.model_types)


def family_for_model_type(model_type, where: str = "config.json") -> Family:
    """The family that reads Hugging Face `model_type`.

    Raises:
        ValueError: one line listing the supported model types.
    """
    for family in list_families():
        if model_type in family.model_types:
            return family
        if model_type in family.refused_model_types:
            raise ValueError(f"{where}: model_type {model_type!r} is not supported: "
                             f"{family.refused_model_types[model_type]}")
    raise ValueError(f"{where}: model_type {model_type!r} is not supported; supported model "
                     f"types: {list(supported_model_types())}")


def family_for_model(model) -> Family:
    """The family whose transformers model computes what `model` computes (for export): the
    first whose `matches` accepts it, else the fallback family (which refuses what it lacks).
    """
    families = [f for f in list_families() if f.hf_config is not None]
    for family in families:
        if family.matches is not None and family.matches(model):
            return family
    fallback = [f for f in families if f.fallback]
    if model.position_embedding == "rope" and fallback:
        return fallback[0]
    raise ValueError("cannot export to a transformers model: no supported family computes "
                     f"this model (families: {[f.name for f in families]})")


def family_for_backbone(backbone) -> Family:
    """The family that reads this keras-hub backbone class.

    Raises:
        ValueError: one line listing the supported keras-hub backbones.
    """
    name = type(backbone).__name__
    for family in list_families():
        if name in family.keras_hub_backbones:
            return family
    raise ValueError(f"{name} is not supported; supported keras-hub backbones: "
                     f"{', '.join(keras_hub_backbones())} (and their CausalLMs or preset "
                     "folders)")


def keras_hub_backbones() -> tuple[str, ...]:
    """Every keras-hub backbone class name some family reads."""
    return tuple(n for f in list_families() for n in f.keras_hub_backbones)


__all__ = ["Family", "family_for_backbone", "family_for_model", "family_for_model_type",
           "get_family", "keras_hub_backbones", "list_families", "register_family",
           "supported_model_types"]
