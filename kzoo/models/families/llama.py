"""Llama: RoPE, RMSNorm, a gated MLP, grouped-query attention, optional biases.

Hugging Face `llama` (Llama 2/3/3.1/3.2, SmolLM, TinyLlama...): torch `Linear`s stored
(out, in) under "model."; kzoo fuses q/k/v and gate/up, so those slots hold several tensors.
The RoPE reader (`kzoo.interop.hf_fields.rope_args`) takes default, linear and llama3 scaling.
keras-hub: `LlamaBackbone`, `Llama3Backbone`. Refused: rope types kzoo lacks, activations
it lacks, attention dropout (kzoo's dropout also acts on residuals), and on export any
setting Llama lacks (q/k norms, post norms, sliding windows...). This module is also the
fallback for export: a RoPE model no other family claims is written as Llama or refused.

Mistral and Qwen2 reuse `rope_args_from_hf`, `slots` and the keras-hub hooks from here.

Example:
```python
from kzoo.models.families.llama import FAMILY
from kzoo.models import CausalLM
FAMILY.hf_config(CausalLM.from_preset("llama_nano"))["model_type"]   # 'llama'
```
"""

from __future__ import annotations

from kzoo.interop.hf_fields import (
    GATED_ACTIVATIONS,
    Fields,
    attention_dropout,
    gated_activation,
    rope_args,
    rope_config,
)
from kzoo.interop.slots import dense, slot
from kzoo.models.families.base import Family, export_refusal, refuse_extras

_BASE = dict(position_embedding="rope", norm="rmsnorm", activation="swiglu",
             tie_embeddings=False, use_bias=False, norm_epsilon=1e-6,
             rope_max_wavelength=10000.0)
PRESETS = {
    "llama_nano": dict(
        _BASE, vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=2, hidden_dim=64,
        intermediate_dim=192, max_sequence_length=128,
        description="Llama style (RoPE, RMSNorm, SwiGLU, grouped-query attention), 2 layers x 64 "
        "dims.",
    ),
    "llama_baby": dict(
        _BASE, vocab_size=256, num_layers=4, num_heads=4, num_kv_heads=2, hidden_dim=128,
        intermediate_dim=352, max_sequence_length=256,
        description="Llama style at nanoGPT's baby budget: 4 layers, 4 query / 2 key-value heads, "
        "128 dims.",
    ),
    "llama_mini": dict(
        _BASE, vocab_size=256, num_layers=6, num_heads=6, num_kv_heads=2, hidden_dim=384,
        intermediate_dim=1024, max_sequence_length=256,
        description="Llama style, 6 layers, 6 query / 2 key-value heads, 384 dims.",
    ),
    "llama_124m": dict(
        _BASE, vocab_size=32000, num_layers=12, num_heads=12, num_kv_heads=4, hidden_dim=768,
        intermediate_dim=2048, max_sequence_length=1024,
        description="Llama style near GPT-2 124M in size: 12 layers, 12 query / 4 key-value "
        "heads, 768 dims, 32,000 tokens.",
    ),
}


def rope_args_from_hf(fields: Fields, overrides: dict, biases=(False, False, False),
                      head_dim: int | None = None) -> dict:
    """The arguments every Llama-shaped config shares; `biases`: (q/k/v, attention output,
    feed-forward); `head_dim`: the default when the config has none (None: width / heads)."""
    hidden = int(fields.get("hidden_size", 4096))
    heads = int(fields.get("num_attention_heads", 32))
    head_dim = hidden // heads if head_dim is None else head_dim
    positions = int(fields.get("max_position_embeddings", 2048))
    return dict(
        vocab_size=int(fields.get("vocab_size", 32000)),
        num_layers=int(fields.get("num_hidden_layers", 32)), num_heads=heads,
        num_kv_heads=int(fields.get("num_key_value_heads", heads)), hidden_dim=hidden,
        intermediate_dim=int(fields.get("intermediate_size", 11008)),
        head_dim=int(fields.get("head_dim", head_dim)),
        max_sequence_length=int(overrides.get("max_sequence_length", positions)),
        position_embedding="rope", norm="rmsnorm", activation=gated_activation(fields),
        tie_embeddings=bool(fields.get("tie_word_embeddings", False)), use_bias=False,
        qkv_bias=biases[0], attention_output_bias=biases[1], feedforward_bias=biases[2],
        norm_epsilon=float(fields.get("rms_norm_eps", 1e-6)),
        dropout=attention_dropout(fields, overrides), **rope_args(fields, positions),
    )


def refuse_biases(fields: Fields, model_type: str) -> None:
    """Mistral and Qwen2 configs may carry Llama's bias switches, which their models ignore."""
    for name in ("attention_bias", "mlp_bias"):
        if fields.get(name):
            fields.refuse(f"{name}=true is not part of {model_type} (transformers ignores it); "
                          "use model_type 'llama' for biased projections")


def args_from_hf(fields: Fields, model_type: str, overrides: dict) -> dict:
    attention = bool(fields.get("attention_bias", False))
    return rope_args_from_hf(fields, overrides,
                             (attention, attention, bool(fields.get("mlp_bias", False))))


def rope_hf_config(model) -> dict:
    """The config fields every Llama-shaped transformers model reads."""
    activation = {v: k for k, v in GATED_ACTIVATIONS.items() if k in (
        "silu", "gelu_pytorch_tanh", "relu")}.get(model.activation)
    if model.norm != "rmsnorm" or activation is None:
        export_refusal(f"Llama needs RMSNorm and a gated activation, got norm={model.norm!r}, "
                       f"activation={model.activation!r}")
    return {"hidden_size": model.hidden_dim, "intermediate_size": model.intermediate_dim,
            "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_heads,
            "num_key_value_heads": model.num_kv_heads, "head_dim": model.head_dim,
            "hidden_act": activation, "max_position_embeddings": model.max_sequence_length,
            "rms_norm_eps": model.norm_epsilon, "attention_dropout": model.dropout,
            **rope_config(model)}


def hf_config(model) -> dict:
    config = rope_hf_config(model)
    if model.qkv_bias != model.attention_output_bias:
        export_refusal("biased attention outputs without biased query/key/value projections")
    refuse_extras(model, "Llama")
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **config,
            "attention_bias": model.qkv_bias, "mlp_bias": model.feedforward_bias}


def slots(model, prefix: str) -> list:
    """Llama's names; Mistral, Qwen2 and Qwen3 (with `attention_slots` extended) use them."""
    out = [slot(model.token_embedding.embeddings, prefix + "embed_tokens.weight")]
    q, kv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    width = model.intermediate_dim
    for i, block in enumerate(model.blocks):
        b = f"{prefix}layers.{i}."
        a, f = block.attention, block.feedforward
        out.append(slot(block.attention_norm.scale, b + "input_layernorm.weight"))
        out += dense(a.query_key_value, [b + f"self_attn.{n}_proj" for n in "qkv"], (q, kv, kv))
        out += dense(a.output_dense, b + "self_attn.o_proj")
        out.append(slot(block.feedforward_norm.scale, b + "post_attention_layernorm.weight"))
        out += dense(f.up, [b + "mlp.gate_proj", b + "mlp.up_proj"], (width, width))
        out += dense(f.down, b + "mlp.down_proj")
    out.append(slot(model.final_norm.scale, prefix + "norm.weight"))
    return out


def keras_hub_table(model) -> list:
    table = [(model.token_embedding.embeddings, ["token_embedding/embeddings"])]
    if not model.tie_embeddings:
        table.append((model.token_embedding.reverse_embeddings,
                      ["token_embedding/reverse_embeddings"]))
    for i, block in enumerate(model.blocks):
        p, a = f"transformer_layer_{i}/", f"transformer_layer_{i}/self_attention/"
        table += [
            (block.attention_norm.scale, [p + "self_attention_layernorm/scale"]),
            (block.attention.query_key_value.kernel,
             [a + n + "/kernel" for n in ("query", "key", "value")]),
            (block.attention.output_dense.kernel, [a + "attention_output/kernel"]),
            (block.feedforward_norm.scale, [p + "feedforward_layernorm/scale"]),
            (block.feedforward.up.kernel, [p + "feedforward_gate_dense/kernel",
                                           p + "feedforward_intermediate_dense/kernel"]),
            (block.feedforward.down.kernel, [p + "feedforward_output_dense/kernel"]),
        ]
    return table + [(model.final_norm.scale, ["sequence_output_layernorm/scale"])]


def args_from_keras_hub(backbone, max_sequence_length: int) -> dict:
    c = backbone.get_config()
    if float(c.get("rope_position_scaling_factor", 1.0)) != 1.0:
        # keras-hub's LlamaRotaryEmbedding overrides the method that would apply it: the
        # backbone computes unscaled RoPE, which kzoo's factor would not reproduce.
        raise ValueError(f"rope_position_scaling_factor={c['rope_position_scaling_factor']} "
                         "is ignored by keras-hub's Llama RoPE; kzoo would apply it, so the "
                         "models would differ: build the backbone without it")
    scaling = None
    if c.get("rope_low_freq_factor") is not None:
        scaling = {"type": "llama3", "factor": c["rope_frequency_adjustment_factor"],
                   "low_freq_factor": c["rope_low_freq_factor"],
                   "high_freq_factor": c["rope_high_freq_factor"],
                   "original_max_position_embeddings": c["rope_pretraining_sequence_length"]}
    return dict(vocab_size=c["vocabulary_size"], num_layers=c["num_layers"],
                num_heads=c["num_query_heads"], num_kv_heads=c["num_key_value_heads"],
                hidden_dim=c["hidden_dim"], intermediate_dim=c["intermediate_dim"],
                max_sequence_length=max_sequence_length, dropout=c["dropout"],
                position_embedding="rope", norm="rmsnorm", activation="swiglu",
                tie_embeddings=bool(backbone.token_embedding.tie_weights), use_bias=False,
                norm_epsilon=c["layer_norm_epsilon"],
                rope_max_wavelength=float(c["rope_max_wavelength"]), rope_scaling=scaling)


def to_keras_hub(model, dtype):
    import keras_hub

    def refuse(what):
        raise ValueError(f"cannot build a keras-hub model: {what}")

    if (model.norm, model.activation) != ("rmsnorm", "swiglu"):
        refuse("LlamaBackbone needs RMSNorm and SwiGLU")
    if model.qkv_bias or model.attention_output_bias or model.feedforward_bias:
        refuse("LlamaBackbone has no projection biases")
    if model.head_dim * model.num_heads != model.hidden_dim:
        refuse("LlamaBackbone has no separate head_dim")
    if model.rope_scaling_factor != 1.0:
        refuse("keras-hub's Llama RoPE ignores rope_position_scaling_factor")
    refuse_extras(model, "LlamaBackbone", to="a keras-hub model")
    scaling = model.rope_scaling or {}
    cls = keras_hub.models.Llama3Backbone if scaling else keras_hub.models.LlamaBackbone
    return cls(
        vocabulary_size=model.vocab_size, num_layers=model.num_layers,
        num_query_heads=model.num_heads, num_key_value_heads=model.num_kv_heads,
        hidden_dim=model.hidden_dim, intermediate_dim=model.intermediate_dim,
        rope_max_wavelength=model.rope_max_wavelength,
        rope_frequency_adjustment_factor=scaling.get("factor"),
        rope_low_freq_factor=scaling.get("low_freq_factor"),
        rope_high_freq_factor=scaling.get("high_freq_factor"),
        rope_pretraining_sequence_length=scaling.get("original_max_position_embeddings"),
        layer_norm_epsilon=model.norm_epsilon, dropout=model.dropout,
        tie_word_embeddings=model.tie_embeddings, dtype=dtype)


FAMILY = Family(
    name="llama", model_types=("llama",), args_from_hf=args_from_hf, slots=slots,
    hf_config=hf_config, fallback=True, presets=PRESETS,
    keras_hub_backbones=("LlamaBackbone", "Llama3Backbone"),
    args_from_keras_hub=args_from_keras_hub, keras_hub_table=keras_hub_table,
    to_keras_hub=to_keras_hub,
)
