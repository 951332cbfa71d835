"""Hugging Face `config.json` <-> `CausalLM` arguments, for every registered model family.

Every field of a config is accounted for: it is translated by the family module that reads
its `model_type` (`kzoo.models.families`), listed in `NO_COMPUTE_FIELDS` with the reason it
cannot change the forward pass, or refused by name when its value asks for something kzoo
does not compute (a sliding window that binds, a rope type kzoo lacks, cross-attention...).
Fields transformers itself does not read (custom keys some checkpoints carry) are reported in
one warning, never dropped unseen. The reader and the shared tables live in
`kzoo.interop.hf_fields`; this module dispatches to the families.

Example:
```python
from kzoo.interop.hf_config import kzoo_args_from_hf
args, family = kzoo_args_from_hf({"model_type": "gpt2", "vocab_size": 100, "n_embd": 32,
                                  "n_layer": 2, "n_head": 4, "n_positions": 64})
args["hidden_dim"], family   # (32, 'gpt2')
```
"""

from __future__ import annotations

import warnings

from kzoo.interop.hf_fields import (  # noqa: F401  (public names kept here)
    GATED_ACTIVATIONS,
    MUST_BE,
    NO_COMPUTE_FIELDS,
    OVERRIDES,
    PLAIN_ACTIVATIONS,
    ROPE_TYPES,
    Fields,
)

_Fields = Fields  # the name before the reader moved to hf_fields


def __getattr__(name):
    # Computed from the registry on first use: the registry's modules import
    # kzoo.interop.hf_fields, so this package cannot import them while it is being imported.
    if name == "SUPPORTED_MODEL_TYPES":
        from kzoo.models.families import supported_model_types

        return supported_model_types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def kzoo_args_from_hf(config: dict, where: str = "config.json",
                      overrides: dict | None = None) -> tuple[dict, str]:
    """`CausalLM` arguments for a Hugging Face config, and the name of its family.

    Args:
        config: dict. the parsed `config.json`.
        where: str. how to name the config in errors (its path).
        overrides: dict or None. `dropout`, `max_sequence_length` (RoPE models only; a
            Mistral window must cover it), `attention_impl`, `name`.

    Returns:
        (args, family): family is the registered family's name ("gpt2", "llama", "mistral",
        ...), which `kzoo.interop.hf_weights.slots` takes.

    Raises:
        ValueError: one line naming the field that kzoo cannot compute, or listing the
            supported model types.
    """
    from kzoo.models.families import family_for_model_type

    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"from_hf got unknown option(s) {unknown}; valid: {list(OVERRIDES)}")
    fields = Fields(config, where)
    model_type = fields.get("model_type")
    family = family_for_model_type(model_type, where)
    for name, allowed in MUST_BE.items():
        if name in config and config[name] not in allowed:
            fields.refuse(f"{name}={config[name]!r} is not supported by kzoo (it changes the "
                          "computation)")
        fields.seen.add(name)
    args = family.args_from_hf(fields, model_type, overrides)
    args["initializer_range"] = float(fields.get("initializer_range", 0.02))
    for key in ("attention_impl", "name"):
        if key in overrides:
            args[key] = overrides[key]
    ignored = sorted(set(config) - fields.seen - set(NO_COMPUTE_FIELDS))
    if ignored:
        warnings.warn(f"{where}: fields {ignored} are not read by transformers' {model_type} "
                      "model either; kzoo ignores them", stacklevel=3)
    return args, family.name


def hf_config_from_kzoo(model, bos_token_id=None, eos_token_id=None, pad_token_id=None) -> dict:
    """The `config.json` of a transformers model computing what `model` computes.

    The family is `kzoo.models.families.family_for_model(model)`: GPT-style models (learned
    positions, LayerNorm) become "gpt2"; RoPE/RMSNorm/gated models "llama", or "qwen2" when
    only the query/key/value projections have biases, and so on for each family's signature.

    Raises:
        ValueError: one line naming the kzoo setting no supported transformers model has.

    Example:
    ```python
    from kzoo.interop.hf_config import hf_config_from_kzoo
    from kzoo.models import CausalLM
    hf_config_from_kzoo(CausalLM.from_preset("llama_nano"))["model_type"]   # 'llama'
    ```
    """
    from kzoo.models.families import family_for_model

    family = family_for_model(model)
    common = {"vocab_size": model.vocab_size, "tie_word_embeddings": model.tie_embeddings,
              "initializer_range": model.initializer_range,
              "dtype": str(model.token_embedding.embeddings.dtype),
              "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
              "pad_token_id": pad_token_id}
    return {**family.hf_config(model), **common}
