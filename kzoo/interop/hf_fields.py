"""Reading a Hugging Face `config.json`: the machinery every family module shares.

A family module (`kzoo.models.families.<name>`) reads its fields through a `Fields`, which
remembers which ones were looked at, so that `kzoo.interop.hf_config` can warn about the rest.
The pieces many families share live here: the fields that cannot change the logits
(`NO_COMPUTE_FIELDS`), the ones that must keep one value (`MUST_BE`), the activation names, the
dropout rule and the RoPE reader for both spellings (transformers 4's `rope_theta` +
`rope_scaling`, 5's `rope_parameters`), and its inverse for export.

Example:
```python
from kzoo.interop.hf_fields import Fields, rope_args
rope_args(Fields({"rope_theta": 500.0}, "config.json"), 64)   # {'rope_max_wavelength': 500.0}
```
"""

from __future__ import annotations

ROPE_TYPES = ("default", "linear", "llama3")

# Fields that cannot change the logits of these architectures, with the reason.
_REASONS = {
    "bookkeeping (names, versions, the stored dtype; `from_hf(dtype=...)` picks the compute "
    "dtype)": ("architectures", "model_type", "transformers_version", "_name_or_path", "dtype",
               "torch_dtype", "_commit_hash", "name_or_path", "transformers.js_config"),
    "token ids for tokenizers and generation (HF's Embedding padding_idx only stops that row's "
    "gradient)": ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
                  "decoder_start_token_id", "tokenizer_class", "prefix"),
    "output and runtime switches": ("use_cache", "output_attentions", "output_hidden_states",
                                    "return_dict", "use_return_dict", "torchscript",
                                    "_attn_implementation", "attn_implementation",
                                    "_attn_implementation_autoset", "is_decoder",
                                    "is_encoder_decoder", "tie_encoder_decoder",
                                    "cross_attention_hidden_size", "keys_to_ignore_at_inference",
                                    "_experts_implementation"),
    "heads and tasks other than causal LM": (
        "id2label", "label2id", "num_labels", "problem_type", "finetuning_task",
        "task_specific_params", "classifier_dropout", "summary_type", "summary_use_proj",
        "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
        "summary_last_dropout"),
    "the same arithmetic split differently (slices, chunks, float32 softmax kzoo always uses)": (
        "pretraining_tp", "chunk_size_feed_forward", "reorder_and_upcast_attn"),
    "generation defaults (kzoo's generate takes them as arguments)": (
        "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
        "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
        "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
        "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
        "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
        "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens"),
    "informational (GPT-2's n_ctx duplicates n_positions; Qwen2's window settings are checked "
    "through use_sliding_window and layer_types)": ("n_ctx", "max_window_layers"),
    "weight initialization (kzoo keeps it for weights created later)": ("initializer_range",),
}
NO_COMPUTE_FIELDS = {field: reason for reason, fields in _REASONS.items() for field in fields}

# Fields that, away from these values, ask for computation kzoo does not do.
MUST_BE = {
    "add_cross_attention": (False, None), "scale_attn_by_inverse_layer_idx": (False, None),
    "scale_attn_weights": (True, None), "pruned_heads": ({}, None), "quantization_config": (None,),
    "auto_map": (None,), "partial_rotary_factor": (1.0, None),
}
# Hugging Face activation -> kzoo's plain / gated activation.
PLAIN_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact",
                     "relu": "relu", "silu": "silu", "swish": "silu"}
GATED_ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu", "gelu_pytorch_tanh": "geglu",
                     "gelu_new": "geglu", "relu": "reglu"}
OVERRIDES = ("dropout", "max_sequence_length", "attention_impl", "name")


class Fields:
    """A config being read: remembers which fields were looked at.

    Args:
        config: dict. the parsed `config.json`.
        where: str. how to name it in errors (its path).
    """

    def __init__(self, config: dict, where: str):
        self.config, self.where, self.seen = config, where, set()

    def get(self, name, default=None):
        self.seen.add(name)
        value = self.config.get(name)
        return default if value is None else value

    def refuse(self, message):
        raise ValueError(f"{self.where}: {message}")


def dropout(fields: Fields, names: tuple[str, ...], defaults: float, override):
    """One dropout rate from several fields; refused when they differ and no override."""
    rates = {name: float(fields.get(name, defaults)) for name in names}
    if override is not None:
        return float(override)
    if len(set(rates.values())) == 1:
        return rates[names[0]]
    fields.refuse(f"dropout rates {rates} differ and kzoo has one rate for embeddings, "
                  "attention and residuals; pass from_hf(..., dropout=...) (it acts only in "
                  "training)")


def attention_dropout(fields: Fields, overrides: dict) -> float:
    """RoPE models' one dropout field, which kzoo cannot apply to attention alone."""
    if overrides.get("dropout") is not None:
        return float(overrides["dropout"])
    if float(fields.get("attention_dropout", 0.0)):
        fields.refuse("attention_dropout > 0: kzoo's dropout also acts on residuals; pass "
                      "from_hf(..., dropout=...) (it acts only in training)")
    return 0.0


def gated_activation(fields: Fields, name: str = "hidden_act", default: str = "silu") -> str:
    activation = fields.get(name, default)
    if activation not in GATED_ACTIVATIONS:
        fields.refuse(f"{name} {activation!r} is not supported; supported: "
                      f"{sorted(GATED_ACTIVATIONS)}")
    return GATED_ACTIVATIONS[activation]


def rope_args(fields: Fields, max_positions: int, rope: dict | None = None) -> dict:
    """RoPE settings from either spelling: transformers 5's `rope_parameters`, or 4.x's
    `rope_theta` + `rope_scaling`; or from `rope`, one entry of a per-layer-type dict."""
    if rope is None:
        rope = {}
        for key in ("rope_scaling", "rope_parameters"):
            value = fields.get(key)
            if value is not None and not isinstance(value, dict):
                fields.refuse(f"{key} must be an object, got {value!r}")
            rope.update(value or {})
    rope = dict(rope)
    theta = float(rope.pop("rope_theta", fields.get("rope_theta", 10000.0)))
    kind = rope.pop("rope_type", None) or rope.get("type") or "default"
    rope.pop("type", None)
    if float(rope.pop("partial_rotary_factor", 1.0)) != 1.0:
        fields.refuse("partial_rotary_factor != 1 (RoPE on part of each head) is not implemented")
    args = {"rope_max_wavelength": theta}
    needs = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}
    missing = [key for key in needs.get(kind, ()) if rope.get(key) is None]
    if missing:
        fields.refuse(f"rope type {kind!r} needs {missing} in rope_parameters/rope_scaling")
    if kind == "linear":
        args["rope_scaling_factor"] = float(rope.pop("factor"))
    elif kind == "llama3":
        args["rope_scaling"] = {
            "type": "llama3", "factor": rope.pop("factor"),
            "low_freq_factor": rope.pop("low_freq_factor"),
            "high_freq_factor": rope.pop("high_freq_factor"),
            # transformers falls back to the context length, as here
            "original_max_position_embeddings": rope.pop(
                "original_max_position_embeddings", None) or max_positions,
        }
    elif kind != "default":
        fields.refuse(f"rope type {kind!r} is not implemented; supported rope types: "
                      f"{list(ROPE_TYPES)}")
    if rope:
        fields.refuse(f"rope settings {sorted(rope)} are not used by rope type {kind!r} in kzoo "
                      "and would change the positions; remove them or use a supported type")
    return args


def rope_config(model) -> dict:
    """The inverse of `rope_args`: both spellings, since transformers 4.x reads
    `rope_theta`/`rope_scaling` and 5.x `rope_parameters`."""
    rope = {"rope_type": "default"}
    if model.rope_scaling is not None:
        rope = {"rope_type": "llama3", **{k: v for k, v in model.rope_scaling.items()
                                          if k != "type"}}
    elif model.rope_scaling_factor != 1.0:
        rope = {"rope_type": "linear", "factor": model.rope_scaling_factor}
    return {"rope_theta": model.rope_max_wavelength,
            "rope_scaling": None if rope["rope_type"] == "default" else dict(rope),
            "rope_parameters": {**rope, "rope_theta": model.rope_max_wavelength}}


LAYER_TYPES = ("full_attention", "sliding_attention")


def window_args(fields: Fields, window, layer_types, context: int) -> dict:
    """`CausalLM`'s `sliding_window` and `layer_types` from a config: `window` (None: none)
    over the layers `layer_types` marks "sliding_attention" (None: every layer).

    A window that covers the context never binds: it is dropped and the model is exactly a
    global one (accepted, as transformers computes the same).
    """
    if layer_types is not None:
        if not isinstance(layer_types, list) or any(not isinstance(t, str) for t in layer_types):
            fields.refuse(f"layer_types must be a list of {list(LAYER_TYPES)}, got "
                          f"{layer_types!r}")
        unknown = sorted(set(layer_types) - set(LAYER_TYPES))
        if unknown:
            fields.refuse(f"layer_types {unknown} are not supported; supported: "
                          f"{list(LAYER_TYPES)}")
        if "sliding_attention" not in layer_types:
            return {}
    if window is None or int(window) >= context:
        return {}
    return {"sliding_window": int(window), "layer_types": layer_types}


def window_config(model, default_window=None) -> dict:
    """The inverse of `window_args`: `sliding_window` and `layer_types` (every layer full
    when the model has no window)."""
    kinds = model.layer_types or ["sliding_attention" if model.sliding_window else
                                  "full_attention"] * model.num_layers
    return {"sliding_window": model.sliding_window or default_window, "layer_types": kinds}
