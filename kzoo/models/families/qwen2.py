"""Qwen2 / Qwen2.5: Llama's layout with biases on the query/key/value projections only.

Hugging Face `qwen2` (Qwen2, Qwen2.5 0.5B-72B). Slots are Llama's (imported; the q/k/v bias
slot appears because those projections have biases). Its window: `use_sliding_window` turns
it on for the layers `layer_types` marks "sliding_attention" (transformers 5 writes the list;
older files give `max_window_layers`, the first layer that slides). Refused: Llama's bias
switches and all Llama refuses. keras-hub: Llama's hooks, which refuse
the biases by name. Exported for a RoPE model whose only biases are q/k/v.

Example:
```python
from kzoo.models.families.qwen2 import FAMILY
from kzoo.models import CausalLM
FAMILY.matches(CausalLM.from_preset("llama_nano", qkv_bias=True))   # True
```
"""

from __future__ import annotations

from kzoo.interop.hf_fields import Fields, window_args, window_config
from kzoo.models.families import llama
from kzoo.models.families.base import Family, extras, refuse_extras


def args_from_hf(fields: Fields, model_type: str, overrides: dict) -> dict:
    llama.refuse_biases(fields, model_type)
    args = llama.rope_args_from_hf(fields, overrides, biases=(True, False, False))
    return {**args, **window_from_hf(fields, args)}


def window_from_hf(fields: Fields, args: dict) -> dict:
    """The window arguments of Qwen2's settings (Qwen3 reads them alike): `sliding_window`
    applies only with `use_sliding_window`, to the `layer_types` layers or, without them, to
    the layers from `max_window_layers` on."""
    window = fields.get("sliding_window")  # read either way: it is then accounted for
    window = window if fields.get("use_sliding_window", False) else None
    layer_types = fields.get("layer_types")
    if layer_types is None and window is not None:
        first = int(fields.get("max_window_layers", 28))  # transformers' default
        layer_types = ["sliding_attention" if i >= first else "full_attention"
                       for i in range(args["num_layers"])]
    fields.seen.add("max_window_layers")
    return window_args(fields, window, layer_types, args["max_sequence_length"])


WINDOW = ("sliding_window", "layer_types")


def matches(model) -> bool:
    return (model.position_embedding == "rope" and model.qkv_bias
            and not model.attention_output_bias and not model.feedforward_bias
            and set(extras(model)) <= set(WINDOW))


def window_hf_config(model) -> dict:
    """Qwen2's and Qwen3's window fields: `layer_types` (transformers 5) and
    `max_window_layers` (4.x: the first layer that slides; exact when no full layer follows
    a sliding one, which 4.x could not express)."""
    if model.sliding_window is None:
        return {"use_sliding_window": False, "sliding_window": None}
    config = window_config(model)
    kinds = config["layer_types"]
    first = kinds.index("sliding_attention") if "sliding_attention" in kinds else len(kinds)
    return {"use_sliding_window": True, **config, "max_window_layers": first}


def hf_config(model) -> dict:
    refuse_extras(model, "Qwen2", handles=WINDOW)
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            **llama.rope_hf_config(model), **window_hf_config(model)}


FAMILY = Family(
    name="qwen2", model_types=("qwen2",), args_from_hf=args_from_hf, slots=llama.slots,
    hf_config=hf_config, matches=matches, keras_hub_table=llama.keras_hub_table,
    to_keras_hub=llama.to_keras_hub,
)
