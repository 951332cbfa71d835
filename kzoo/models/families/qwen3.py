"""Qwen3: Llama's layout plus a per-head RMSNorm on queries and keys before RoPE.

Hugging Face `qwen3` (Qwen3 0.6B-32B dense): q/k/v/o biases only with `attention_bias`, an
explicit `head_dim` (128 when absent, transformers' default), grouped-query attention, a tied
or untied head, and Qwen2's window (`use_sliding_window` over the `layer_types` /
`max_window_layers` layers). Slots are Llama's plus `self_attn.q_norm` / `k_norm` per layer.
Refused: `mlp_bias` (Qwen3 ignores it), and all Llama refuses (rope types, activations...).
keras-hub: `Qwen3Backbone` (Llama's table plus the q/k norms; it slides every layer by
`sliding_window_size`, so mixed `layer_types` are refused on the way out).

Example:
```python
from kzoo.models import CausalLM
model = CausalLM.from_preset("qwen3_nano")
model.qk_norm, model.head_dim   # (True, 16)
```
"""

from __future__ import annotations

from kzoo.interop.hf_fields import Fields
from kzoo.interop.slots import slot
from kzoo.models.families import llama, qwen2
from kzoo.models.families.base import Family, extras, refuse_extras

_BASE = dict(position_embedding="rope", norm="rmsnorm", activation="swiglu", use_bias=False,
             norm_epsilon=1e-6, qk_norm=True)
PRESETS = {
    "qwen3_nano": dict(
        _BASE, vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=2, hidden_dim=64,
        head_dim=16, intermediate_dim=192, max_sequence_length=128, tie_embeddings=True,
        rope_max_wavelength=1000000.0,
        description="Qwen3 style (q/k norms, GQA, tied head), 2 layers x 64 dims: for tests.",
    ),
    # Qwen/Qwen3-0.6B's config.json (also keras-hub's qwen3_0.6b_en preset).
    "qwen3_0_6b": dict(
        _BASE, vocab_size=151936, num_layers=28, num_heads=16, num_kv_heads=8, hidden_dim=1024,
        head_dim=128, intermediate_dim=3072, max_sequence_length=40960, tie_embeddings=True,
        rope_max_wavelength=1000000.0,
        description="The Qwen3 0.6B shape: 28 layers, 16 query / 8 key-value heads of 128, "
        "1,024 dims, 151,936 tokens, tied head.",
    ),
}
WINDOW = qwen2.WINDOW


def args_from_hf(fields: Fields, model_type: str, overrides: dict) -> dict:
    if fields.get("mlp_bias"):
        fields.refuse("mlp_bias=true is not part of qwen3 (transformers ignores it)")
    bias = bool(fields.get("attention_bias", False))
    # head_dim: transformers' Qwen3 default is 128, not width / heads
    args = llama.rope_args_from_hf(fields, overrides, (bias, bias, False), head_dim=128)
    return {**args, **qwen2.window_from_hf(fields, args), "qk_norm": True}


def matches(model) -> bool:
    return (model.position_embedding == "rope" and set(extras(model)) <= {"qk_norm", *WINDOW}
            and getattr(model, "qk_norm", False))


def hf_config(model) -> dict:
    refuse_extras(model, "Qwen3", handles=("qk_norm", *WINDOW))
    if model.qkv_bias != model.attention_output_bias or model.feedforward_bias:
        raise ValueError("cannot export to a transformers model: Qwen3 has biases on all of "
                         "q/k/v/o (attention_bias) or none, and none in the feed-forward")
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            **llama.rope_hf_config(model), "attention_bias": model.qkv_bias,
            **qwen2.window_hf_config(model)}


def slots(model, prefix: str) -> list:
    out = llama.slots(model, prefix)
    for i, block in enumerate(model.blocks):
        b = f"{prefix}layers.{i}.self_attn."
        out += [slot(block.attention.query_norm.scale, b + "q_norm.weight"),
                slot(block.attention.key_norm.scale, b + "k_norm.weight")]
    return out



def keras_hub_table(model) -> list:
    table = llama.keras_hub_table(model)
    for i, block in enumerate(model.blocks):
        a = f"transformer_layer_{i}/self_attention/"
        table += [(block.attention.query_norm.scale, [a + "query_dense_layernorm/scale"]),
                  (block.attention.key_norm.scale, [a + "key_dense_layernorm/scale"])]
    return table


def args_from_keras_hub(backbone, max_sequence_length: int) -> dict:
    c = backbone.get_config()
    window = c.get("sliding_window_size")  # keras-hub slides every layer by it
    return dict(vocab_size=c["vocabulary_size"], num_layers=c["num_layers"],
                num_heads=c["num_query_heads"], num_kv_heads=c["num_key_value_heads"],
                head_dim=c["head_dim"], hidden_dim=c["hidden_dim"],
                intermediate_dim=c["intermediate_dim"], max_sequence_length=max_sequence_length,
                dropout=c["dropout"], position_embedding="rope", norm="rmsnorm",
                activation="swiglu", tie_embeddings=bool(c["tie_word_embeddings"]),
                use_bias=False, norm_epsilon=c["layer_norm_epsilon"], qk_norm=True,
                rope_max_wavelength=float(c["rope_max_wavelength"]),
                rope_scaling_factor=float(c["rope_scaling_factor"]),
                sliding_window=window if window and window < max_sequence_length else None)


def to_keras_hub(model, dtype):
    import keras_hub

    def refuse(what):
        raise ValueError(f"cannot build a keras-hub model: Qwen3Backbone {what}")

    if model.activation != "swiglu":
        refuse("needs SwiGLU")
    if model.qkv_bias or model.attention_output_bias or model.feedforward_bias:
        refuse("has no projection biases")
    if model.rope_scaling is not None:
        refuse("has no llama3 rope scaling")
    if set(model.layer_types or ["sliding_attention"]) != {"sliding_attention"}:
        refuse("slides every layer or none (layer_types mixes them)")
    refuse_extras(model, "Qwen3Backbone", handles=("qk_norm", *WINDOW), to="a keras-hub model")
    return keras_hub.models.Qwen3Backbone(
        vocabulary_size=model.vocab_size, num_layers=model.num_layers,
        num_query_heads=model.num_heads, num_key_value_heads=model.num_kv_heads,
        head_dim=model.head_dim, hidden_dim=model.hidden_dim,
        intermediate_dim=model.intermediate_dim, rope_max_wavelength=model.rope_max_wavelength,
        rope_scaling_factor=model.rope_scaling_factor, layer_norm_epsilon=model.norm_epsilon,
        dropout=model.dropout, tie_word_embeddings=model.tie_embeddings,
        # no window: one the length of the context, which never binds
        sliding_window_size=model.sliding_window or model.max_sequence_length, dtype=dtype)


# The chat template of Qwen/Qwen3-0.6B's tokenizer_config.json (the hybrid thinking models),
# written from memory of the public file, not copied from it: ChatML turns, tools in the system
# turn, <think> blocks kept only after the last user query, `enable_thinking=False` writing an
# empty one. tests/tokenizers/test_family_chat_templates.py renders it with kzoo and
# transformers from one tokenizer_config.json and checks the well-known prompt text.
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""  # noqa: E501 (the template's own lines)
# Qwen3's named tokens: no BOS; the turn end is the EOS, the document end pads; <think> and
# </think> are added (not special) tokens, so decoding keeps them.
SPECIAL_TOKENS = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
ADDED_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
                "<tool_call>", "</tool_call>")


FAMILY = Family(
    name="qwen3", model_types=("qwen3",), args_from_hf=args_from_hf, slots=slots,
    hf_config=hf_config, matches=matches, presets=PRESETS,
    keras_hub_backbones=("Qwen3Backbone",), args_from_keras_hub=args_from_keras_hub,
    keras_hub_table=keras_hub_table, to_keras_hub=to_keras_hub,
)
