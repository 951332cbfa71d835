"""Hugging Face `config.json` <-> `CausalLM` arguments, for gpt2, llama, mistral and qwen2.

Every field of a config is accounted for: it is translated (`kzoo_args_from_hf`), listed in
`NO_COMPUTE_FIELDS` with the reason it cannot change the forward pass, or refused by name when
its value asks for something kzoo does not compute (a sliding window that binds, a rope type
kzoo lacks, cross-attention...). Fields transformers itself does not read (custom keys some
checkpoints carry) are reported in one warning, never dropped unseen.

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

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
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
_MUST_BE = {
    "add_cross_attention": (False, None), "scale_attn_by_inverse_layer_idx": (False, None),
    "scale_attn_weights": (True, None), "pruned_heads": ({}, None), "quantization_config": (None,),
    "auto_map": (None,), "partial_rotary_factor": (1.0, None),
}
_GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact",
                     "relu": "relu", "silu": "silu", "swish": "silu"}
_GATED_ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu", "gelu_pytorch_tanh": "geglu",
                      "gelu_new": "geglu", "relu": "reglu"}
OVERRIDES = ("dropout", "max_sequence_length", "attention_impl", "name")


class _Fields:
    """A config being read: remembers which fields were looked at."""

    def __init__(self, config: dict, where: str):
        self.config, self.where, self.seen = config, where, set()

    def get(self, name, default=None):
        self.seen.add(name)
        value = self.config.get(name)
        return default if value is None else value

    def refuse(self, message):
        raise ValueError(f"{self.where}: {message}")


def _dropout(fields: _Fields, names: tuple[str, ...], defaults: float, override):
    rates = {name: float(fields.get(name, defaults)) for name in names}
    if override is not None:
        return float(override)
    if len(set(rates.values())) == 1:
        return rates[names[0]]
    fields.refuse(f"dropout rates {rates} differ and kzoo has one rate for embeddings, "
                  "attention and residuals; pass from_hf(..., dropout=...) (it acts only in "
                  "training)")


def _rope(fields: _Fields, max_positions: int) -> dict:
    """RoPE settings from either spelling: transformers 5's `rope_parameters`, or 4.x's
    `rope_theta` + `rope_scaling`."""
    rope = {}
    for key in ("rope_scaling", "rope_parameters"):
        value = fields.get(key)
        if value is not None and not isinstance(value, dict):
            fields.refuse(f"{key} must be an object, got {value!r}")
        rope.update(value or {})
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


def _gpt2(fields: _Fields, overrides: dict) -> dict:
    hidden = int(fields.get("n_embd", 768))
    activation = fields.get("activation_function", "gelu_new")
    if activation not in _GPT2_ACTIVATIONS:
        fields.refuse(f"activation_function {activation!r} is not supported; supported: "
                      f"{sorted(_GPT2_ACTIVATIONS)}")
    positions = int(fields.get("n_positions", 1024))
    if overrides.get("max_sequence_length", positions) != positions:
        fields.refuse("GPT-2 learns one embedding per position: max_sequence_length must stay "
                      f"n_positions={positions}")
    return dict(
        vocab_size=int(fields.get("vocab_size", 50257)), num_layers=int(fields.get("n_layer", 12)),
        num_heads=int(fields.get("n_head", 12)), hidden_dim=hidden,
        intermediate_dim=int(fields.get("n_inner", 4 * hidden)), max_sequence_length=positions,
        position_embedding="learned", norm="layernorm", activation=_GPT2_ACTIVATIONS[activation],
        tie_embeddings=bool(fields.get("tie_word_embeddings", True)), use_bias=True,
        norm_epsilon=float(fields.get("layer_norm_epsilon", 1e-5)),
        dropout=_dropout(fields, ("resid_pdrop", "embd_pdrop", "attn_pdrop"), 0.1,
                         overrides.get("dropout")),
    )


def _check_window(fields: _Fields, model_type: str, context: int) -> None:
    """Sliding-window attention is not implemented: refuse a window that would bind."""
    window = fields.get("sliding_window")
    if model_type == "qwen2":
        layer_types = fields.get("layer_types") or []
        unknown = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
        if unknown:
            fields.refuse(f"layer_types {unknown} are not supported")
        sliding = fields.get("use_sliding_window", False) and (
            not layer_types or "sliding_attention" in layer_types)
        if not sliding:
            return
    if window is not None and int(window) < context:
        fields.refuse(f"sliding_window={window} is smaller than the context "
                      f"({context} positions) and kzoo has no sliding-window attention; load "
                      f"with from_hf(..., max_sequence_length={window}) to stay inside the window")


def _llama_family(fields: _Fields, model_type: str, overrides: dict) -> dict:
    hidden = int(fields.get("hidden_size", 4096))
    heads = int(fields.get("num_attention_heads", 32))
    activation = fields.get("hidden_act", "silu")
    if activation not in _GATED_ACTIVATIONS:
        fields.refuse(f"hidden_act {activation!r} is not supported; supported: "
                      f"{sorted(_GATED_ACTIVATIONS)}")
    positions = int(fields.get("max_position_embeddings", 2048))
    context = int(overrides.get("max_sequence_length", positions))
    _check_window(fields, model_type, context)
    if model_type == "llama":
        attention_bias = bool(fields.get("attention_bias", False))
        biases = (attention_bias, attention_bias, bool(fields.get("mlp_bias", False)))
    else:  # qwen2: biased q/k/v only; mistral: no biases
        biases = (model_type == "qwen2", False, False)
    for name in ("attention_bias", "mlp_bias") if model_type != "llama" else ():
        if fields.get(name):
            fields.refuse(f"{name}=true is not part of {model_type} (transformers ignores it); "
                          "use model_type 'llama' for biased projections")
    fields.seen.update(("layer_types", "use_sliding_window", "sliding_window"))
    if overrides.get("dropout") is not None:
        dropout = float(overrides["dropout"])
    elif float(fields.get("attention_dropout", 0.0)):
        fields.refuse("attention_dropout > 0: kzoo's dropout also acts on residuals; pass "
                      "from_hf(..., dropout=...) (it acts only in training)")
    else:
        dropout = 0.0
    return dict(
        vocab_size=int(fields.get("vocab_size", 32000)),
        num_layers=int(fields.get("num_hidden_layers", 32)), num_heads=heads,
        num_kv_heads=int(fields.get("num_key_value_heads", heads)), hidden_dim=hidden,
        intermediate_dim=int(fields.get("intermediate_size", 11008)),
        head_dim=int(fields.get("head_dim", hidden // heads)), max_sequence_length=context,
        position_embedding="rope", norm="rmsnorm", activation=_GATED_ACTIVATIONS[activation],
        tie_embeddings=bool(fields.get("tie_word_embeddings", False)), use_bias=False,
        qkv_bias=biases[0], attention_output_bias=biases[1], feedforward_bias=biases[2],
        norm_epsilon=float(fields.get("rms_norm_eps", 1e-6)),
        dropout=dropout,
        **_rope(fields, positions),
    )


def kzoo_args_from_hf(config: dict, where: str = "config.json",
                      overrides: dict | None = None) -> tuple[dict, str]:
    """`CausalLM` arguments for a Hugging Face config, and the weight-layout family.

    Args:
        config: dict. the parsed `config.json`.
        where: str. how to name the config in errors (its path).
        overrides: dict or None. `dropout`, `max_sequence_length` (RoPE models only; a
            Mistral window must cover it), `attention_impl`, `name`.

    Returns:
        (args, family): family is "gpt2" or "llama" (mistral and qwen2 share Llama's layout).

    Raises:
        ValueError: one line naming the field that kzoo cannot compute, or listing the
            supported model types.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"from_hf got unknown option(s) {unknown}; valid: {list(OVERRIDES)}")
    fields = _Fields(config, where)
    model_type = fields.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        fields.refuse(f"model_type {model_type!r} is not supported; supported model types: "
                      f"{list(SUPPORTED_MODEL_TYPES)}")
    for name, allowed in _MUST_BE.items():
        if name in config and config[name] not in allowed:
            fields.refuse(f"{name}={config[name]!r} is not supported by kzoo (it changes the "
                          "computation)")
        fields.seen.add(name)
    if model_type == "gpt2":
        args, family = _gpt2(fields, overrides), "gpt2"
    else:
        args, family = _llama_family(fields, model_type, overrides), "llama"
    args["initializer_range"] = float(fields.get("initializer_range", 0.02))
    for key in ("attention_impl", "name"):
        if key in overrides:
            args[key] = overrides[key]
    ignored = sorted(set(config) - fields.seen - set(NO_COMPUTE_FIELDS))
    if ignored:
        warnings.warn(f"{where}: fields {ignored} are not read by transformers' {model_type} "
                      "model either; kzoo ignores them", stacklevel=3)
    return args, family


def hf_config_from_kzoo(model, bos_token_id=None, eos_token_id=None, pad_token_id=None) -> dict:
    """The `config.json` of a transformers model computing what `model` computes.

    GPT-style models (learned positions, LayerNorm) become "gpt2"; RoPE/RMSNorm/gated models
    become "llama", or "qwen2" when only the query/key/value projections have biases.

    Raises:
        ValueError: one line naming the kzoo setting no supported transformers model has.

    Example:
    ```python
    from kzoo.interop.hf_config import hf_config_from_kzoo
    from kzoo.models import CausalLM
    hf_config_from_kzoo(CausalLM.from_preset("llama_nano"))["model_type"]   # 'llama'
    ```
    """
    def refuse(what):
        raise ValueError(f"cannot export to a transformers model: {what}")

    tokens = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
              "pad_token_id": pad_token_id}
    variable_dtype = model.token_embedding.embeddings.dtype
    common = {"vocab_size": model.vocab_size, "tie_word_embeddings": model.tie_embeddings,
              "initializer_range": model.initializer_range, "dtype": str(variable_dtype),
              **tokens}
    if model.position_embedding == "learned":
        activation = {v: k for k, v in _GPT2_ACTIVATIONS.items() if k in (
            "gelu_new", "gelu", "relu", "silu")}.get(model.activation)
        if model.norm != "layernorm" or activation is None:
            refuse(f"GPT-2 needs LayerNorm and a plain activation, got norm={model.norm!r}, "
                   f"activation={model.activation!r}")
        if not (model.use_bias and model.qkv_bias and model.attention_output_bias
                and model.feedforward_bias):
            refuse("GPT-2 has biases in every projection and norm; this model lacks some")
        if model.num_kv_heads != model.num_heads or model.head_dim * model.num_heads != (
                model.hidden_dim):
            refuse("GPT-2 has neither grouped-query attention nor a separate head_dim")
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "n_embd": model.hidden_dim, "n_layer": model.num_layers,
                "n_head": model.num_heads, "n_inner": model.intermediate_dim,
                "n_positions": model.max_sequence_length, "activation_function": activation,
                "layer_norm_epsilon": model.norm_epsilon, "resid_pdrop": model.dropout,
                "embd_pdrop": model.dropout, "attn_pdrop": model.dropout, **common}
    activation = {v: k for k, v in _GATED_ACTIVATIONS.items() if k in (
        "silu", "gelu_pytorch_tanh", "relu")}.get(model.activation)
    if model.norm != "rmsnorm" or activation is None:
        refuse(f"Llama needs RMSNorm and a gated activation, got norm={model.norm!r}, "
               f"activation={model.activation!r}")
    if model.qkv_bias and not model.attention_output_bias and not model.feedforward_bias:
        model_type, arch, extra = "qwen2", "Qwen2ForCausalLM", {"use_sliding_window": False,
                                                                "sliding_window": None}
    elif model.qkv_bias == model.attention_output_bias:
        model_type, arch = "llama", "LlamaForCausalLM"
        extra = {"attention_bias": model.qkv_bias, "mlp_bias": model.feedforward_bias}
    else:
        refuse("biased attention outputs without biased query/key/value projections")
    rope = {"rope_type": "default"}
    if model.rope_scaling is not None:
        rope = {"rope_type": "llama3", **{k: v for k, v in model.rope_scaling.items()
                                          if k != "type"}}
    elif model.rope_scaling_factor != 1.0:
        rope = {"rope_type": "linear", "factor": model.rope_scaling_factor}
    return {"architectures": [arch], "model_type": model_type,
            "hidden_size": model.hidden_dim, "intermediate_size": model.intermediate_dim,
            "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_heads,
            "num_key_value_heads": model.num_kv_heads, "head_dim": model.head_dim,
            "hidden_act": activation, "max_position_embeddings": model.max_sequence_length,
            "rms_norm_eps": model.norm_epsilon, "attention_dropout": model.dropout,
            # Both spellings: transformers 4.x reads rope_theta/rope_scaling, 5.x
            # rope_parameters.
            "rope_theta": model.rope_max_wavelength,
            "rope_scaling": None if rope["rope_type"] == "default" else dict(rope),
            "rope_parameters": {**rope, "rope_theta": model.rope_max_wavelength},
            **extra, **common}
