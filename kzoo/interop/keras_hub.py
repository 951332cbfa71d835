"""keras-hub GPT-2 and Llama-family models <-> `CausalLM`, weight for weight.

keras-hub keeps attention kernels per head, (hidden, heads, head_dim), and separate query, key,
value and gate/up projections; kzoo keeps them flat and fused. Each kzoo variable is listed
with the keras-hub variables that make it (in order along its last axis), so the same table
copies both ways.

Example:
```python
from kzoo.interop.keras_hub import from_keras_hub, to_keras_hub
from kzoo.models import CausalLM
backbone = to_keras_hub(CausalLM.from_preset("gpt_nano"))   # a keras_hub GPT2Backbone
model = from_keras_hub(backbone)
```
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from keras import ops

from kzoo.interop.safetensors_io import convert


def _gpt2_table(model):
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


def _llama_table(model):
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


def _variables(backbone) -> dict:
    # Paths are "layer/variable"; a backbone nested in a task may add a leading scope.
    found = {}
    for variable in backbone.weights:
        path = variable.path
        for start in ("token_embedding/", "position_embedding/", "transformer_layer_",
                      "layer_norm/", "sequence_output_layernorm/"):
            if start in path:
                path = path[path.index(start):]
                break
        found[path] = variable
    return found


def _backbone(model_or_preset):
    import keras_hub

    if isinstance(model_or_preset, str | os.PathLike):
        folder = Path(model_or_preset)
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} is not a keras-hub preset folder (no config.json; "
                             "write one with model.save_to_preset(folder))")
        try:
            return keras_hub.models.Backbone.from_preset(str(folder))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as error:  # keras-hub raises many kinds; report one line
            reason = " ".join(str(error).split())[:200]
            raise ValueError(f"{folder}: keras-hub could not load this preset: {reason}"
                             ) from None
    return getattr(model_or_preset, "backbone", model_or_preset)


def _check_kind(backbone):
    import keras_hub

    kinds = (keras_hub.models.GPT2Backbone, keras_hub.models.LlamaBackbone)
    if not isinstance(backbone, kinds):
        raise ValueError(f"{type(backbone).__name__} is not supported; supported keras-hub "
                         "backbones: GPT2Backbone, LlamaBackbone, Llama3Backbone (and their "
                         "CausalLMs or preset folders)")
    return "gpt2" if isinstance(backbone, kinds[0]) else "llama"


def _kzoo_args(backbone, family: str, max_sequence_length: int) -> dict:
    c = backbone.get_config()
    if family == "gpt2":
        return dict(vocab_size=c["vocabulary_size"], num_layers=c["num_layers"],
                    num_heads=c["num_heads"], hidden_dim=c["hidden_dim"],
                    intermediate_dim=c["intermediate_dim"],
                    max_sequence_length=c["max_sequence_length"], dropout=c["dropout"],
                    position_embedding="learned", norm="layernorm", activation="gelu",
                    tie_embeddings=True, use_bias=True, norm_epsilon=1e-5)
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


def _copy(table, hub: dict, to_kzoo: bool) -> None:
    for variable, paths in table:
        missing = [p for p in paths if p not in hub]
        if missing:
            raise ValueError(f"the keras-hub model has no variable {missing[0]!r} (for kzoo "
                             f"variable {variable.path})")
        parts = [hub[p] for p in paths]
        lead = tuple(variable.shape)[:-1]
        if to_kzoo:
            arrays = [ops.convert_to_numpy(v).reshape(*lead, -1) for v in parts]
            value = np.concatenate(arrays, axis=-1)
            if value.shape != tuple(variable.shape):
                raise ValueError(f"keras-hub variables {paths} make shape {value.shape}; kzoo "
                                 f"variable {variable.path} is {tuple(variable.shape)}")
            variable.assign(convert(value, variable.dtype))
        else:
            value = ops.convert_to_numpy(variable)
            sizes = [int(np.prod(v.shape)) // max(int(np.prod(lead)), 1) for v in parts]
            pieces = np.split(value, np.cumsum(sizes)[:-1], axis=-1)
            for target, piece in zip(parts, pieces):
                target.assign(convert(piece.reshape(tuple(target.shape)), target.dtype))


def from_keras_hub(model_or_preset, dtype=None, max_sequence_length: int = 4096):
    """A `CausalLM` with the weights of a keras-hub GPT-2 or Llama / Llama 3 model.

    Args:
        model_or_preset: keras_hub Backbone, CausalLM or str. a backbone, a task holding one,
            or a preset folder written by `save_to_preset`.
        dtype: str or None. the kzoo model's dtype policy; None: Keras' default.
        max_sequence_length: int. context of a Llama model (keras-hub's Llama has no limit);
            GPT-2 keeps its own.

    Raises:
        ValueError: one line for another kind of model, or a variable that is missing.

    Example:
    ```python
    import keras_hub
    from kzoo.models import CausalLM
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=100, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=32, intermediate_dim=48)
    model = CausalLM.from_keras_hub(backbone, max_sequence_length=256)
    ```
    """
    from kzoo.models import CausalLM

    backbone = _backbone(model_or_preset)
    family = _check_kind(backbone)
    args = _kzoo_args(backbone, family, max_sequence_length)
    if dtype is not None:
        args["dtype"] = dtype
    model = CausalLM(**args)
    table = (_gpt2_table if family == "gpt2" else _llama_table)(model)
    _copy(table, _variables(backbone), to_kzoo=True)
    return model


def to_keras_hub(model, dtype=None):
    """The keras-hub backbone computing what `model` computes: `GPT2Backbone` for GPT-style
    models, `LlamaBackbone` (`Llama3Backbone` with Llama 3.1 RoPE scaling) for Llama-style.

    Wrap it for generation with e.g. `keras_hub.models.GPT2CausalLM(backbone, preprocessor)`.

    Args:
        model: CausalLM. the kzoo model.
        dtype: str or None. the backbone's dtype policy; None: the model's.

    Raises:
        ValueError: one line naming the kzoo setting keras-hub's model lacks.
    """
    import keras_hub

    def refuse(what):
        raise ValueError(f"cannot build a keras-hub model: {what}")

    dtype = dtype or model.dtype_policy.name
    if model.position_embedding == "learned":
        if (model.norm, model.activation, model.tie_embeddings) != ("layernorm", "gelu", True) \
                or model.num_kv_heads != model.num_heads or model.norm_epsilon != 1e-5:
            refuse("GPT2Backbone needs LayerNorm (epsilon 1e-5), tanh GELU, tied embeddings "
                   "and no grouped-query attention")
        if not (model.use_bias and model.qkv_bias and model.attention_output_bias
                and model.feedforward_bias):
            refuse("GPT2Backbone has biases in every projection")
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=model.vocab_size, num_layers=model.num_layers,
            num_heads=model.num_heads, hidden_dim=model.hidden_dim,
            intermediate_dim=model.intermediate_dim, dropout=model.dropout,
            max_sequence_length=model.max_sequence_length, dtype=dtype)
        table = _gpt2_table(model)
    else:
        if (model.norm, model.activation) != ("rmsnorm", "swiglu"):
            refuse("LlamaBackbone needs RMSNorm and SwiGLU")
        if model.qkv_bias or model.attention_output_bias or model.feedforward_bias:
            refuse("LlamaBackbone has no projection biases")
        if model.head_dim * model.num_heads != model.hidden_dim:
            refuse("LlamaBackbone has no separate head_dim")
        if model.rope_scaling_factor != 1.0:
            refuse("keras-hub's Llama RoPE ignores rope_position_scaling_factor")
        scaling = model.rope_scaling or {}
        cls = keras_hub.models.Llama3Backbone if scaling else keras_hub.models.LlamaBackbone
        backbone = cls(
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
        table = _llama_table(model)
    _copy(table, _variables(backbone), to_kzoo=False)
    return backbone
