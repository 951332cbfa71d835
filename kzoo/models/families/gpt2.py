"""GPT-2: learned positions, LayerNorm, a plain GELU MLP, biases everywhere, a tied head.

Hugging Face `gpt2` (GPT-2 124M-1.5B, DistilGPT-2): `Conv1D` stores (in, out), so no weight is
transposed; checkpoints from `GPT2LMHeadModel` prefix "transformer.", the Hub's base-model
files none. keras-hub: `GPT2Backbone`. Refused: cross-attention,
`scale_attn_by_inverse_layer_idx`, unscaled attention (`kzoo.interop.hf_fields.MUST_BE`),
activations kzoo lacks, differing dropout rates, a context other than `n_positions`.

Example:
```python
from kzoo.models.families.gpt2 import FAMILY
from kzoo.interop.hf_fields import Fields
FAMILY.args_from_hf(Fields({"n_embd": 32}, "config.json"), "gpt2", {})["hidden_dim"]   # 32
```
"""

from __future__ import annotations

from kzoo.interop.hf_fields import PLAIN_ACTIVATIONS, Fields, dropout
from kzoo.interop.slots import slot
from kzoo.models.families.base import Family, export_refusal, refuse_extras

_BASE = dict(position_embedding="learned", norm="layernorm", activation="gelu",
             tie_embeddings=True, use_bias=True, norm_epsilon=1e-5)
PRESETS = {
    "gpt_nano": dict(
        _BASE, vocab_size=256, num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=256,
        max_sequence_length=128,
        description="GPT-2 style, 2 layers x 64 dims (~0.1M params + embeddings): trains in "
        "seconds on a CPU.",
    ),
    "gpt_baby": dict(
        _BASE, vocab_size=256, num_layers=4, num_heads=4, hidden_dim=128, intermediate_dim=512,
        max_sequence_length=256,
        description="GPT-2 style, nanoGPT's 'baby' CPU shape: 4 layers, 4 heads, 128 dims "
        "(~0.8M params).",
    ),
    "gpt_mini": dict(
        _BASE, vocab_size=256, num_layers=6, num_heads=6, hidden_dim=384, intermediate_dim=1536,
        max_sequence_length=256,
        description="GPT-2 style, nanoGPT's Shakespeare-char shape: 6 layers, 6 heads, 384 dims "
        "(~10.7M params).",
    ),
    "gpt2_124m": dict(
        _BASE, vocab_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
        intermediate_dim=3072, max_sequence_length=1024,
        description="The GPT-2 124M shape: 12 layers, 12 heads, 768 dims, 50,257 tokens, "
        "1,024 positions.",
    ),
}


def args_from_hf(fields: Fields, model_type: str, overrides: dict) -> dict:
    hidden = int(fields.get("n_embd", 768))
    activation = fields.get("activation_function", "gelu_new")
    if activation not in PLAIN_ACTIVATIONS:
        fields.refuse(f"activation_function {activation!r} is not supported; supported: "
                      f"{sorted(PLAIN_ACTIVATIONS)}")
    positions = int(fields.get("n_positions", 1024))
    if overrides.get("max_sequence_length", positions) != positions:
        fields.refuse("GPT-2 learns one embedding per position: max_sequence_length must stay "
                      f"n_positions={positions}")
    return dict(
        vocab_size=int(fields.get("vocab_size", 50257)), num_layers=int(fields.get("n_layer", 12)),
        num_heads=int(fields.get("n_head", 12)), hidden_dim=hidden,
        intermediate_dim=int(fields.get("n_inner", 4 * hidden)), max_sequence_length=positions,
        position_embedding="learned", norm="layernorm", activation=PLAIN_ACTIVATIONS[activation],
        tie_embeddings=bool(fields.get("tie_word_embeddings", True)), use_bias=True,
        norm_epsilon=float(fields.get("layer_norm_epsilon", 1e-5)),
        dropout=dropout(fields, ("resid_pdrop", "embd_pdrop", "attn_pdrop"), 0.1,
                        overrides.get("dropout")),
    )


def hf_config(model) -> dict:
    # The first HF name of each kzoo activation, the one transformers computes exactly.
    activation = {v: k for k, v in PLAIN_ACTIVATIONS.items() if k in (
        "gelu_new", "gelu", "relu", "silu")}.get(model.activation)
    if model.norm != "layernorm" or activation is None:
        export_refusal(f"GPT-2 needs LayerNorm and a plain activation, got norm={model.norm!r}, "
                       f"activation={model.activation!r}")
    if not (model.use_bias and model.qkv_bias and model.attention_output_bias
            and model.feedforward_bias):
        export_refusal("GPT-2 has biases in every projection and norm; this model lacks some")
    if model.num_kv_heads != model.num_heads or model.head_dim * model.num_heads != (
            model.hidden_dim):
        export_refusal("GPT-2 has neither grouped-query attention nor a separate head_dim")
    refuse_extras(model, "GPT-2")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_embd": model.hidden_dim, "n_layer": model.num_layers,
            "n_head": model.num_heads, "n_inner": model.intermediate_dim,
            "n_positions": model.max_sequence_length, "activation_function": activation,
            "layer_norm_epsilon": model.norm_epsilon, "resid_pdrop": model.dropout,
            "embd_pdrop": model.dropout, "attn_pdrop": model.dropout}


def slots(model, prefix: str) -> list:
    out = [slot(model.token_embedding.embeddings, prefix + "wte.weight"),
           slot(model.position_embedding_layer.embeddings, prefix + "wpe.weight")]

    def norm(layer, name):
        return [slot(layer.gamma, name + ".weight"), slot(layer.beta, name + ".bias")]

    def conv1d(layer, name):  # (in, out) like Keras: no transpose
        return [slot(layer.kernel, name + ".weight"), slot(layer.bias, name + ".bias")]

    for i, block in enumerate(model.blocks):
        b = f"{prefix}h.{i}."
        out += norm(block.attention_norm, b + "ln_1")
        out += conv1d(block.attention.query_key_value, b + "attn.c_attn")
        out += conv1d(block.attention.output_dense, b + "attn.c_proj")
        out += norm(block.feedforward_norm, b + "ln_2")
        out += conv1d(block.feedforward.up, b + "mlp.c_fc")
        out += conv1d(block.feedforward.down, b + "mlp.c_proj")
    return out + norm(model.final_norm, prefix + "ln_f")


def keras_hub_table(model) -> list:
    table = [(model.token_embedding.embeddings, ["token_embedding/embeddings"]),
             (model.position_embedding_layer.embeddings, ["position_embedding/embeddings"])]

    def norm(layer, name):
        return [(layer.gamma, [name + "/gamma"]), (layer.beta, [name + "/beta"])]

    for i, block in enumerate(model.blocks):
        p, a = f"transformer_layer_{i}/", f"transformer_layer_{i}/self_attention/"
        qkv, out = block.attention.query_key_value, block.attention.output_dense
        table += [(qkv.kernel, [a + n + "/kernel" for n in ("query", "key", "value")]),
                  (qkv.bias, [a + n + "/bias" for n in ("query", "key", "value")]),
                  (out.kernel, [a + "attention_output/kernel"]),
                  (out.bias, [a + "attention_output/bias"])]
        table += norm(block.attention_norm, p + "self_attention_layer_norm")
        for layer, name in ((block.feedforward.up, "feedforward_intermediate_dense"),
                            (block.feedforward.down, "feedforward_output_dense")):
            table += [(layer.kernel, [p + name + "/kernel"]), (layer.bias, [p + name + "/bias"])]
        table += norm(block.feedforward_norm, p + "feedforward_layer_norm")
    return table + norm(model.final_norm, "layer_norm")


def args_from_keras_hub(backbone, max_sequence_length: int) -> dict:
    c = backbone.get_config()  # GPT-2 keeps its own context: max_sequence_length unused
    return dict(vocab_size=c["vocabulary_size"], num_layers=c["num_layers"],
                num_heads=c["num_heads"], hidden_dim=c["hidden_dim"],
                intermediate_dim=c["intermediate_dim"],
                max_sequence_length=c["max_sequence_length"], dropout=c["dropout"],
                position_embedding="learned", norm="layernorm", activation="gelu",
                tie_embeddings=True, use_bias=True, norm_epsilon=1e-5)


def to_keras_hub(model, dtype):
    import keras_hub

    if (model.norm, model.activation, model.tie_embeddings) != ("layernorm", "gelu", True) \
            or model.num_kv_heads != model.num_heads or model.norm_epsilon != 1e-5:
        raise ValueError("cannot build a keras-hub model: GPT2Backbone needs LayerNorm "
                         "(epsilon 1e-5), tanh GELU, tied embeddings and no grouped-query "
                         "attention")
    if not (model.use_bias and model.qkv_bias and model.attention_output_bias
            and model.feedforward_bias):
        raise ValueError("cannot build a keras-hub model: GPT2Backbone has biases in every "
                         "projection")
    refuse_extras(model, "GPT2Backbone", to="a keras-hub model")
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=model.vocab_size, num_layers=model.num_layers,
        num_heads=model.num_heads, hidden_dim=model.hidden_dim,
        intermediate_dim=model.intermediate_dim, dropout=model.dropout,
        max_sequence_length=model.max_sequence_length, dtype=dtype)


FAMILY = Family(
    name="gpt2", model_types=("gpt2",), args_from_hf=args_from_hf, slots=slots,
    hf_config=hf_config, matches=lambda model: model.position_embedding == "learned",
    prefix="transformer.", first_tensor="wte.weight", presets=PRESETS,
    keras_hub_backbones=("GPT2Backbone",), args_from_keras_hub=args_from_keras_hub,
    keras_hub_table=keras_hub_table, to_keras_hub=to_keras_hub,
)
