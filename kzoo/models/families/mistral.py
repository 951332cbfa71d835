"""Mistral: Llama's layout and computation without biases, and a sliding window.

Hugging Face `mistral` (Mistral 7B v0.1-v0.3, Mistral NeMo with `head_dim` 128). The weight
names, slots and the RoPE config are Llama's (imported); its `sliding_window` slides every
layer (CausalLM's `sliding_window`; a window covering the context is dropped, exactly). Refused:
Llama's bias switches (transformers' Mistral ignores them) and all Llama refuses. Exported for
a bias-free RoPE model whose every layer slides; without a window, Llama is written.

Example:
```python
from kzoo.models.families.mistral import FAMILY
from kzoo.interop.hf_fields import Fields
args = FAMILY.args_from_hf(Fields({"sliding_window": 16, "max_position_embeddings": 64},
                                  "config.json"), "mistral", {})
args["sliding_window"]   # 16
```
"""

from __future__ import annotations

from kzoo.interop.hf_fields import Fields, window_args
from kzoo.models.families import llama
from kzoo.models.families.base import Family, extras, refuse_extras


def args_from_hf(fields: Fields, model_type: str, overrides: dict) -> dict:
    llama.refuse_biases(fields, model_type)
    args = llama.rope_args_from_hf(fields, overrides)
    args.update(window_args(fields, fields.get("sliding_window"), None,
                            args["max_sequence_length"]))
    return args


def matches(model) -> bool:
    kinds = set(model.layer_types or ["sliding_attention"])
    return (model.position_embedding == "rope" and model.sliding_window is not None
            and kinds == {"sliding_attention"} and set(extras(model)) <= {
                "sliding_window", "layer_types"}
            and not (model.qkv_bias or model.attention_output_bias or model.feedforward_bias))


def hf_config(model) -> dict:
    refuse_extras(model, "Mistral", handles=("sliding_window", "layer_types"))
    return {"architectures": ["MistralForCausalLM"], "model_type": "mistral",
            **llama.rope_hf_config(model), "sliding_window": model.sliding_window}


FAMILY = Family(name="mistral", model_types=("mistral",), args_from_hf=args_from_hf,
                slots=llama.slots, hf_config=hf_config, matches=matches)
