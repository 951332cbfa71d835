"""Gemma 3 (text): (1 + w) RMSNorms before and after each branch, q/k norms, scaled embeddings,
GeGLU with the tanh GELU, and sliding-window (local) layers between global ones.

Hugging Face `gemma3_text` (Gemma 3 270M, 1B; the text model of the larger ones): `layer_types`
(or 4.x's `sliding_window_pattern`, every 6th layer global) picks each layer's attention and
RoPE: local layers use their own base (`rope_parameters["sliding_attention"]`, 4.x's
`rope_local_base_freq`) without scaling, global ones the config's rope scaling
(`rope_parameters["full_attention"]`, 4.x's `rope_theta` + `rope_scaling`). Queries are scaled
by `query_pre_attn_scalar ** -0.5`. Norm weights are stored as `w`: kzoo's
`norm_scale_offset=1.0` computes `x * (1 + w)` on them, so no value is transformed.
Refused by name: logit soft-capping, `attention_bias`, bidirectional attention, a local rope
type other than default, activations other than the tanh GELU, and the multimodal "gemma3"
model_type (load its text checkpoint).
keras-hub: `Gemma3Backbone` (text only) both ways; its q/k/v kernels are stored per head,
(heads, hidden, head_dim), so their table entries carry an axis permutation. It hard-codes
the layer pattern (every 6th layer global), the RoPE bases and the query scale, so a model
with another pattern (gemma3_nano's 1 : 1), base or `query_pre_attn_scalar` is refused by
name on the way out, as are vision encoders, soft-capping and embedding models on the way in.

Example:
```python
from kzoo.models import CausalLM
model = CausalLM.from_preset("gemma3_nano")
model.layer_types, model.embedding_scale   # (['sliding_attention', 'full_attention'], 8.0)
```
"""

from __future__ import annotations

import math

from kzoo.interop.hf_fields import Fields, attention_dropout, rope_args, rope_config, window_args
from kzoo.interop.slots import dense, slot
from kzoo.models.families.base import Family, export_refusal, extras, refuse_extras

_BASE = dict(position_embedding="rope", norm="rmsnorm", activation="geglu", use_bias=False,
             norm_epsilon=1e-6, tie_embeddings=True, qk_norm=True, norm_scale_offset=1.0,
             post_norms=True, rope_max_wavelength=1000000.0,
             local_rope_max_wavelength=10000.0)


def _pattern(num_layers: int, every: int = 6) -> list[str]:
    """transformers' default `layer_types`: every `every`-th layer global, the rest local."""
    return ["sliding_attention" if (i + 1) % every else "full_attention"
            for i in range(num_layers)]


PRESETS = {
    "gemma3_nano": dict(
        _BASE, vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=1, hidden_dim=64,
        head_dim=16, intermediate_dim=192, max_sequence_length=128, sliding_window=32,
        layer_types=_pattern(2, 2), embedding_scale=8.0, attention_scale=16**-0.5,
        description="Gemma 3 style (local/global layers, q/k and post norms, GeGLU), 2 layers "
        "x 64 dims: for tests.",
    ),
    # google/gemma-3-270m's config.json; keras-hub 0.32's gemma3_270m preset counts the same
    # 268,098,176 parameters (tests/models/test_family_presets.py checks it).
    "gemma3_270m": dict(
        _BASE, vocab_size=262144, num_layers=18, num_heads=4, num_kv_heads=1, hidden_dim=640,
        head_dim=256, intermediate_dim=2048, max_sequence_length=32768, sliding_window=512,
        layer_types=_pattern(18), embedding_scale=640**0.5, attention_scale=256**-0.5,
        description="The Gemma 3 270M shape: 18 layers (5 local : 1 global, window 512), 4 "
        "query / 1 key-value heads of 256, 640 dims, 262,144 tokens.",
    ),
    # google/gemma-3-1b-pt's config.json; keras-hub's gemma3_1b: 999,885,952 parameters.
    "gemma3_1b": dict(
        _BASE, vocab_size=262144, num_layers=26, num_heads=4, num_kv_heads=1, hidden_dim=1152,
        head_dim=256, intermediate_dim=6912, max_sequence_length=32768, sliding_window=512,
        layer_types=_pattern(26), embedding_scale=1152**0.5, attention_scale=256**-0.5,
        description="The Gemma 3 1B shape: 26 layers (5 local : 1 global, window 512), 4 "
        "query / 1 key-value heads of 256, 1,152 dims, 262,144 tokens.",
    ),
}
_MUST_BE_OFF = ("final_logit_softcapping", "attn_logit_softcapping", "attention_bias",
                "use_bidirectional_attention")
_TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")


def _ropes(fields: Fields) -> tuple[dict, dict]:
    """(global, local) RoPE settings from either spelling."""
    params = fields.get("rope_parameters")
    if isinstance(params, dict) and set(params) & {"full_attention", "sliding_attention"}:
        unknown = sorted(set(params) - {"full_attention", "sliding_attention"})
        if unknown:
            fields.refuse(f"rope_parameters has entries {unknown}; Gemma 3 reads "
                          "'full_attention' and 'sliding_attention'")
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
    else:  # 4.x: one global setting plus a local base
        if params is not None and not isinstance(params, dict):
            fields.refuse(f"rope_parameters must be an object, got {params!r}")
        full = {**(fields.get("rope_scaling") or {}), **(params or {})}
        local = {}
    full.setdefault("rope_theta", fields.get("rope_theta", 1000000.0))
    local.setdefault("rope_theta", fields.get("rope_local_base_freq", 10000.0))
    fields.seen.update(("rope_scaling", "rope_theta", "rope_local_base_freq"))
    return full, local


def args_from_hf(fields: Fields, model_type: str, overrides: dict) -> dict:
    for name in _MUST_BE_OFF:
        if fields.get(name):
            fields.refuse(f"{name}={fields.config[name]!r} is not implemented in kzoo (it "
                          "changes the computation); supported: null / false")
    activation = fields.get("hidden_activation") or fields.get("hidden_act", "gelu_pytorch_tanh")
    if activation not in _TANH_GELU:
        fields.refuse(f"hidden_activation {activation!r} is not supported; supported: "
                      f"{list(_TANH_GELU)}")
    hidden = int(fields.get("hidden_size", 2304))
    heads = int(fields.get("num_attention_heads", 8))
    head_dim = int(fields.get("head_dim", 256))
    layers = int(fields.get("num_hidden_layers", 26))
    positions = int(fields.get("max_position_embeddings", 131072))
    context = int(overrides.get("max_sequence_length", positions))
    # transformers 5 writes layer_types (and its private copy of the pattern); 4.x the pattern
    every = fields.get("sliding_window_pattern", fields.get("_sliding_window_pattern", 6))
    layer_types = fields.get("layer_types") or _pattern(layers, int(every))
    full, local = _ropes(fields)
    global_rope = rope_args(fields, positions, full)
    local_rope = rope_args(fields, positions, local)
    if set(local_rope) != {"rope_max_wavelength"}:
        fields.refuse(f"rope_parameters['sliding_attention'] {local} scales the local RoPE; "
                      "kzoo's local layers take a base only")
    window = window_args(fields, fields.get("sliding_window", 4096), layer_types, context)
    return dict(
        vocab_size=int(fields.get("vocab_size", 262208)), num_layers=layers,
        num_heads=heads, num_kv_heads=int(fields.get("num_key_value_heads", 4)),
        hidden_dim=hidden, intermediate_dim=int(fields.get("intermediate_size", 9216)),
        head_dim=head_dim, max_sequence_length=context, position_embedding="rope",
        norm="rmsnorm", activation="geglu",
        tie_embeddings=bool(fields.get("tie_word_embeddings", True)), use_bias=False,
        norm_epsilon=float(fields.get("rms_norm_eps", 1e-6)),
        dropout=attention_dropout(fields, overrides), qk_norm=True, norm_scale_offset=1.0,
        embedding_scale=math.sqrt(hidden), post_norms=True,
        attention_scale=float(fields.get("query_pre_attn_scalar", 256)) ** -0.5,
        local_rope_max_wavelength=local_rope["rope_max_wavelength"],
        # the types pick each layer's RoPE even where the window does not bind
        **{"layer_types": list(layer_types), **window}, **global_rope,
    )


def matches(model) -> bool:
    return model.position_embedding == "rope" and bool(set(extras(model)) & {
        "norm_scale_offset", "embedding_scale", "post_norms", "local_rope_max_wavelength",
        "attention_scale"})


def hf_config(model) -> dict:
    wanted = dict(norm="rmsnorm", activation="geglu", qk_norm=True, norm_scale_offset=1.0,
                  post_norms=True, qkv_bias=False, attention_output_bias=False,
                  feedforward_bias=False)
    for name, value in wanted.items():
        if getattr(model, name, None) != value:
            export_refusal(f"Gemma 3 needs {name}={value!r}, got {getattr(model, name, None)!r}")
    if model.embedding_scale is None or not math.isclose(
            model.embedding_scale, math.sqrt(model.hidden_dim), rel_tol=1e-6):
        export_refusal(f"Gemma 3 scales embeddings by sqrt(hidden_dim), got "
                       f"embedding_scale={model.embedding_scale!r}")
    rope = rope_config(model)
    local = ({"rope_type": "default", "rope_theta": model.local_rope_max_wavelength}
             if model.local_rope_max_wavelength is not None else rope["rope_parameters"])
    # transformers types it as an int: an integer-valued scalar is written as one
    scalar = model.head_dim if model.attention_scale is None else model.attention_scale ** -2
    scalar = round(scalar) if math.isclose(scalar, round(scalar), rel_tol=1e-9) else scalar
    return {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
            "hidden_size": model.hidden_dim, "intermediate_size": model.intermediate_dim,
            "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_heads,
            "num_key_value_heads": model.num_kv_heads, "head_dim": model.head_dim,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": model.max_sequence_length,
            "rms_norm_eps": model.norm_epsilon, "attention_dropout": model.dropout,
            "query_pre_attn_scalar": scalar,
            # No window: one the length of the context, which never binds.
            "sliding_window": model.sliding_window or model.max_sequence_length,
            "layer_types": model.layer_types or ["full_attention"] * model.num_layers,
            "rope_parameters": {"full_attention": rope["rope_parameters"],
                                "sliding_attention": local},
            "final_logit_softcapping": None, "attn_logit_softcapping": None,
            "attention_bias": False}


def slots(model, prefix: str) -> list:
    out = [slot(model.token_embedding.embeddings, prefix + "embed_tokens.weight")]
    q, kv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    width = model.intermediate_dim
    for i, block in enumerate(model.blocks):
        b = f"{prefix}layers.{i}."
        a, f = block.attention, block.feedforward
        out += [slot(block.attention_norm.scale, b + "input_layernorm.weight"),
                slot(a.query_norm.scale, b + "self_attn.q_norm.weight"),
                slot(a.key_norm.scale, b + "self_attn.k_norm.weight"),
                slot(block.post_attention_norm.scale, b + "post_attention_layernorm.weight"),
                slot(block.feedforward_norm.scale, b + "pre_feedforward_layernorm.weight"),
                slot(block.post_feedforward_norm.scale,
                     b + "post_feedforward_layernorm.weight")]
        out += dense(a.query_key_value, [b + f"self_attn.{n}_proj" for n in "qkv"], (q, kv, kv))
        out += dense(a.output_dense, b + "self_attn.o_proj")
        out += dense(f.up, [b + "mlp.gate_proj", b + "mlp.up_proj"], (width, width))
        out += dense(f.down, b + "mlp.down_proj")
    out.append(slot(model.final_norm.scale, prefix + "norm.weight"))
    return out


# keras-hub 0.32's Gemma3Backbone fixes in its code what kzoo takes as settings: every 6th
# layer global when it slides (`i % 6 < 5` local), RoPE bases 10,000 (local) and 1,000,000
# (global), queries scaled by head_dim ** -0.5 (its blocks pass query_head_dim_normalize=True
# whatever the backbone says), the blocks' norm epsilon 1e-6 (only the final norm reads
# layer_norm_epsilon) and a tied head.
_HUB_EVERY, _HUB_LOCAL_BASE, _HUB_GLOBAL_BASE, _HUB_EPSILON = 6, 10000.0, 1000000.0, 1e-6
# keras-hub's q/k/v kernels are (heads, hidden, head_dim); swapped to (hidden, heads,
# head_dim) they flatten into kzoo's fused (hidden, heads * head_dim) kernel.
_HEADS_FIRST = (1, 0, 2)


def keras_hub_table(model) -> list:
    table = [(model.token_embedding.embeddings, ["token_embedding/embeddings"])]
    for i, block in enumerate(model.blocks):
        p = f"decoder_block_{i}/"
        a, f = block.attention, block.feedforward
        table += [
            (block.attention_norm.scale, [p + "pre_attention_norm/scale"]),
            (a.query_key_value.kernel,
             [p + f"attention/{n}/kernel" for n in ("query", "key", "value")], _HEADS_FIRST),
            (a.output_dense.kernel, [p + "attention/attention_output/kernel"]),
            (block.feedforward_norm.scale, [p + "pre_ffw_norm/scale"]),
            # gelu(ffw_gating) * ffw_gating_2: the gate first, as in kzoo's fused kernel
            (f.up.kernel, [p + "ffw_gating/kernel", p + "ffw_gating_2/kernel"]),
            (f.down.kernel, [p + "ffw_linear/kernel"]),
        ]
        if model.qk_norm:
            table += [(a.query_norm.scale, [p + "attention/query_norm/scale"]),
                      (a.key_norm.scale, [p + "attention/key_norm/scale"])]
        if model.post_norms:
            table += [(block.post_attention_norm.scale, [p + "post_attention_norm/scale"]),
                      (block.post_feedforward_norm.scale, [p + "post_ffw_norm/scale"])]
    return table + [(model.final_norm.scale, ["final_normalization/scale"])]


def args_from_keras_hub(backbone, max_sequence_length: int) -> dict:
    c = backbone.get_config()

    def refuse(what):
        raise ValueError(f"cannot read this Gemma3Backbone: {what}")

    if c.get("vision_encoder") is not None:
        refuse("it has a vision encoder; kzoo reads the text model (vision_encoder=None)")
    for name in ("attention_logit_soft_cap", "final_logit_soft_cap"):
        if c.get(name) is not None:
            refuse(f"{name}={c[name]!r} is not implemented in kzoo; supported: None")
    for name in ("use_bidirectional_attention", "is_embedding_model"):
        if c.get(name):
            refuse(f"{name}=True is not a causal language model; supported: False")
    if float(c.get("local_rope_scaling_factor", 1.0)) != 1.0:
        refuse(f"local_rope_scaling_factor={c['local_rope_scaling_factor']} is not "
               "implemented (kzoo's local layers take a RoPE base only); supported: 1.0")
    if float(c["layer_norm_epsilon"]) != _HUB_EPSILON:
        refuse(f"layer_norm_epsilon={c['layer_norm_epsilon']} reaches only its final norm "
               f"(its blocks use {_HUB_EPSILON}); kzoo has one epsilon; supported: 1e-06")
    if bool(c["use_post_ffw_norm"]) != bool(c["use_post_attention_norm"]):
        refuse("use_post_ffw_norm and use_post_attention_norm differ; kzoo's post_norms "
               "are both or neither")
    layers, sliding = c["num_layers"], bool(c["use_sliding_window_attention"])
    return dict(
        vocab_size=c["vocabulary_size"], num_layers=layers, num_heads=c["num_query_heads"],
        num_kv_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
        hidden_dim=c["hidden_dim"], intermediate_dim=c["intermediate_dim"],
        max_sequence_length=max_sequence_length, dropout=c["dropout"],
        position_embedding="rope", norm="rmsnorm", activation="geglu", tie_embeddings=True,
        use_bias=False, norm_epsilon=_HUB_EPSILON, qk_norm=bool(c["use_query_key_norm"]),
        norm_scale_offset=1.0, post_norms=bool(c["use_post_ffw_norm"]),
        embedding_scale=math.sqrt(c["hidden_dim"]), attention_scale=c["head_dim"] ** -0.5,
        rope_max_wavelength=_HUB_GLOBAL_BASE, local_rope_max_wavelength=_HUB_LOCAL_BASE,
        rope_scaling_factor=float(c["global_rope_scaling_factor"]),
        layer_types=_pattern(layers, _HUB_EVERY) if sliding else ["full_attention"] * layers,
        sliding_window=c["sliding_window_size"] if sliding else None)


def to_keras_hub(model, dtype):
    import keras_hub

    def refuse(what):
        raise ValueError(f"cannot build a keras-hub model: Gemma3Backbone {what}")

    wanted = dict(norm="rmsnorm", activation="geglu", norm_scale_offset=1.0, qkv_bias=False,
                  attention_output_bias=False, feedforward_bias=False, tie_embeddings=True,
                  norm_epsilon=_HUB_EPSILON, rope_max_wavelength=_HUB_GLOBAL_BASE,
                  rope_scaling=None)
    for name, value in wanted.items():
        if getattr(model, name, None) != value:
            refuse(f"needs {name}={value!r}, got {getattr(model, name, None)!r}")
    if model.embedding_scale is None or not math.isclose(
            model.embedding_scale, math.sqrt(model.hidden_dim), rel_tol=1e-6):
        refuse(f"scales embeddings by sqrt(hidden_dim), got {model.embedding_scale!r}")
    if model.attention_scale is not None and not math.isclose(
            model.attention_scale, model.head_dim ** -0.5, rel_tol=1e-6):
        refuse(f"scales queries by head_dim ** -0.5 only, got attention_scale="
               f"{model.attention_scale!r}")
    kinds = model.layer_kinds
    sliding = "sliding_attention" in kinds
    if sliding and kinds != _pattern(model.num_layers, _HUB_EVERY):
        refuse(f"has one layer pattern (every {_HUB_EVERY}th layer global) or all global, got "
               f"layer_types={kinds}")
    local = model.local_rope_max_wavelength or model.rope_max_wavelength
    if sliding and local != _HUB_LOCAL_BASE:
        refuse(f"needs local_rope_max_wavelength={_HUB_LOCAL_BASE!r}, got {local!r}")
    refuse_extras(model, "Gemma3Backbone", to="a keras-hub model", handles=(
        "qk_norm", "norm_scale_offset", "embedding_scale", "post_norms", "sliding_window",
        "layer_types", "local_rope_max_wavelength", "attention_scale"))
    return keras_hub.models.Gemma3Backbone(
        vocabulary_size=model.vocab_size, image_size=896,  # read only with a vision encoder
        num_layers=model.num_layers, num_query_heads=model.num_heads,
        num_key_value_heads=model.num_kv_heads, hidden_dim=model.hidden_dim,
        intermediate_dim=model.intermediate_dim, head_dim=model.head_dim,
        use_query_key_norm=bool(model.qk_norm), use_post_ffw_norm=bool(model.post_norms),
        use_post_attention_norm=bool(model.post_norms), use_sliding_window_attention=sliding,
        # sliding layers without a window attend to everything: one the context's length
        sliding_window_size=model.sliding_window or model.max_sequence_length,
        global_rope_scaling_factor=model.rope_scaling_factor,
        layer_norm_epsilon=model.norm_epsilon, dropout=model.dropout, dtype=dtype)


# The chat template of google/gemma-3-270m-it's tokenizer_config.json, written from memory of
# the public file, not copied from it: a system message folded into the first user turn,
# strictly alternating user/model turns, image placeholders for list contents.
# tests/tokenizers/test_family_chat_templates.py renders it with kzoo and transformers from
# one tokenizer_config.json and checks the well-known prompt text.
CHAT_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"""
# Gemma 3's named tokens; the instruction-tuned models end a reply with <end_of_turn>, which
# their generation_config.json lists beside <eos> (ids 1 and 106 in the real vocabulary).
SPECIAL_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                  "unk_token": "<unk>"}
ADDED_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                "<start_of_image>")


FAMILY = Family(
    name="gemma3", model_types=("gemma3_text",), args_from_hf=args_from_hf, slots=slots,
    hf_config=hf_config, matches=matches, presets=PRESETS,
    keras_hub_backbones=("Gemma3Backbone",), args_from_keras_hub=args_from_keras_hub,
    keras_hub_table=keras_hub_table, to_keras_hub=to_keras_hub,
    refused_model_types={"gemma3": "it is the multimodal Gemma 3 (vision tower + text model); "
                         "kzoo reads the text model: use a 'gemma3_text' checkpoint (Gemma 3 "
                         "270M / 1B, or the text model saved with Gemma3ForCausalLM)"},
)
