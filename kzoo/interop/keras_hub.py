"""keras-hub models <-> `CausalLM`, weight for weight, for every family with a keras-hub table.

keras-hub keeps attention kernels per head, (hidden, heads, head_dim), and separate query, key,
value and gate/up projections; kzoo keeps them flat and fused. Each family module
(`kzoo.models.families`) lists every kzoo variable with the keras-hub variables that make it
(in order along its last axis), so the same table copies both ways; this module finds the
backbone, picks the family and copies. An entry may carry a third item, an axis permutation
that puts a keras-hub array in kzoo's axis order before it is flattened (Gemma 3 stores its
q/k/v kernels (heads, hidden, head_dim)); the way back applies the inverse.

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


def _variables(backbone) -> dict:
    # Paths are "layer/variable"; a backbone nested in a task may add a leading scope.
    found = {}
    for variable in backbone.weights:
        path = variable.path
        for start in ("token_embedding/", "position_embedding/", "transformer_layer_",
                      "decoder_block_", "layer_norm/", "sequence_output_layernorm/",
                      "final_normalization/"):
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


def _copy(table, hub: dict, to_kzoo: bool) -> None:
    for variable, paths, *permute in table:
        # permute: axes taking a keras-hub array to kzoo's order (None: already in it)
        permute = permute[0] if permute else None
        missing = [p for p in paths if p not in hub]
        if missing:
            raise ValueError(f"the keras-hub model has no variable {missing[0]!r} (for kzoo "
                             f"variable {variable.path})")
        parts = [hub[p] for p in paths]
        lead = tuple(variable.shape)[:-1]
        if to_kzoo:
            arrays = [ops.convert_to_numpy(v) for v in parts]
            if permute is not None:
                arrays = [np.transpose(a, permute) for a in arrays]
            value = np.concatenate([a.reshape(*lead, -1) for a in arrays], axis=-1)
            if value.shape != tuple(variable.shape):
                raise ValueError(f"keras-hub variables {paths} make shape {value.shape}; kzoo "
                                 f"variable {variable.path} is {tuple(variable.shape)}")
            variable.assign(convert(value, variable.dtype))
        else:
            value = ops.convert_to_numpy(variable)
            sizes = [int(np.prod(v.shape)) // max(int(np.prod(lead)), 1) for v in parts]
            pieces = np.split(value, np.cumsum(sizes)[:-1], axis=-1)
            for target, piece in zip(parts, pieces):
                shape = tuple(target.shape)
                if permute is not None:
                    # unflatten in kzoo's axis order, then back to keras-hub's
                    piece = piece.reshape(tuple(shape[a] for a in permute))
                    piece = np.transpose(piece, np.argsort(permute))
                target.assign(convert(piece.reshape(shape), target.dtype))


def from_keras_hub(model_or_preset, dtype=None, max_sequence_length: int = 4096):
    """A `CausalLM` with the weights of a keras-hub model (GPT-2, Llama / Llama 3, Qwen3,
    Gemma 3 text: the backbones of `kzoo.models.families.keras_hub_backbones()`).

    Args:
        model_or_preset: keras_hub Backbone, CausalLM or str. a backbone, a task holding one,
            or a preset folder written by `save_to_preset`.
        dtype: str or None. the kzoo model's dtype policy; None: Keras' default.
        max_sequence_length: int. context of a RoPE model (keras-hub's Llama, Qwen3 and Gemma 3
            have no limit); GPT-2 keeps its own.

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
    from kzoo.models.families import family_for_backbone

    backbone = _backbone(model_or_preset)
    family = family_for_backbone(backbone)
    args = family.args_from_keras_hub(backbone, max_sequence_length)
    if dtype is not None:
        args["dtype"] = dtype
    model = CausalLM(**args)
    _copy(family.keras_hub_table(model), _variables(backbone), to_kzoo=True)
    return model


def to_keras_hub(model, dtype=None):
    """The keras-hub backbone computing what `model` computes, from its family's hooks:
    `GPT2Backbone` for GPT-style models, `LlamaBackbone` (`Llama3Backbone` with Llama 3.1 RoPE
    scaling) for Llama-style, `Qwen3Backbone`, `Gemma3Backbone` (text, its fixed layer
    pattern), ...

    Wrap it for generation with e.g. `keras_hub.models.GPT2CausalLM(backbone, preprocessor)`.

    Args:
        model: CausalLM. the kzoo model.
        dtype: str or None. the backbone's dtype policy; None: the model's.

    Raises:
        ValueError: one line naming the kzoo setting keras-hub's model lacks.
    """
    from kzoo.models.families import family_for_model

    family = family_for_model(model)
    if family.to_keras_hub is None:
        raise ValueError(f"cannot build a keras-hub model: kzoo has no keras-hub table for "
                         f"the {family.name} family")
    backbone = family.to_keras_hub(model, dtype or model.dtype_policy.name)
    table = family.keras_hub_table(model)
    _copy(table, _variables(backbone), to_kzoo=False)
    return backbone
