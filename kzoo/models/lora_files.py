"""The LoRA adapters' own file: `save_lora` writes the adapters alone to a small safetensors
file (metadata: format, rank, alpha, targets); `load_lora` puts them back on a model of the
same shape, names and shapes checked first.

`model.save("x.keras")` is another thing: it merges the adapters into the kernels (see
`kzoo.models.lora`, which re-exports every name here).

Example:
```python
from kzoo.models import CausalLM
from kzoo.models.lora_files import load_lora, read_lora_settings, save_lora
model = CausalLM.from_preset("gpt_nano")
model.enable_lora(rank=4, targets="attention")
save_lora(model, "adapters.safetensors")
read_lora_settings("adapters.safetensors")  # {'rank': 4, 'alpha': 4.0, 'targets': (...)}
load_lora(CausalLM.from_preset("gpt_nano"), "adapters.safetensors")
```
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from keras import ops

from kzoo.models.lora_adapters import (
    _relative,
    _require,
    adapter_weights,
    enable_lora,
    lora_spec,
    resolve_targets,
    target_layers,
)

FILE_FORMAT = "kzoo-lora"


def _adapter_shapes(layer, rank: int, targets) -> dict:
    """Names and shapes `enable_lora(layer, rank, targets=targets)` would create."""
    shapes = {}
    for dense in target_layers(layer, targets):
        name = _relative(layer, dense.path)
        in_dim = getattr(dense, "_orig_input_dim", None) or dense._kernel.shape[0]
        shapes[f"{name}/lora_kernel_a"] = (int(in_dim), rank)
        shapes[f"{name}/lora_kernel_b"] = (rank, int(dense.units))
    return shapes


def save_lora(layer, path) -> Path:
    """Write the adapters alone to a safetensors file (metadata: format, rank, alpha, targets).

    Example:
    ```python
    save_lora(model, "adapters.safetensors")
    ```
    """
    from kzoo.interop.safetensors_io import write_safetensors

    spec = _require(layer)
    tensors = {name: np.asarray(ops.convert_to_numpy(var), "float32")
               for name, var in adapter_weights(layer).items()}
    metadata = {"format": FILE_FORMAT, "lora": json.dumps(spec.as_dict())}
    return write_safetensors(path, tensors, metadata)


def read_lora_settings(path) -> dict:
    """The {"rank", "alpha", "targets"} a `save_lora` file was written with."""
    from kzoo.interop.safetensors_io import SafetensorsFile

    meta = SafetensorsFile(path).metadata
    if meta.get("format") != FILE_FORMAT:
        raise ValueError(f"{path} is not a kzoo LoRA file (metadata format "
                         f"{meta.get('format')!r}, expected {FILE_FORMAT!r}); write one with "
                         "save_lora")
    try:
        settings = json.loads(meta["lora"])
        return {"rank": int(settings["rank"]), "alpha": float(settings["alpha"]),
                "targets": resolve_targets(settings["targets"])}
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: bad 'lora' metadata {meta.get('lora')!r} ({error})") from None


def load_lora(layer, path):
    """Put the adapters of a `save_lora` file on `layer` (enabling LoRA with the file's rank,
    alpha and targets when `layer` has none). Names and shapes are checked first.

    Example:
    ```python
    model = CausalLM.from_preset("gpt_nano")
    load_lora(model, "adapters.safetensors")
    ```
    """
    from kzoo.interop.safetensors_io import SafetensorsFile

    settings = read_lora_settings(path)
    spec = lora_spec(layer)
    if spec is not None and (spec.rank, spec.alpha, spec.targets) != (
            settings["rank"], settings["alpha"], settings["targets"]):
        raise ValueError(f"{path} holds adapters {settings}; {layer.name!r} has "
                         f"{spec.as_dict()}. Load onto a model without adapters.")
    file = SafetensorsFile(path)
    expected = _adapter_shapes(layer, settings["rank"], settings["targets"])
    for name in sorted(file.keys()):
        if name not in expected:
            raise ValueError(f"{path}: tensor {name!r} has no place in {layer.name!r}; "
                             f"its adapters are e.g. {sorted(expected)[:2]}")
        if file.shape(name) != expected[name]:
            raise ValueError(f"{path}: tensor {name!r} has shape {file.shape(name)}; "
                             f"the model's is {expected[name]}")
    missing = sorted(set(expected) - set(file.keys()))
    if missing:
        raise ValueError(f"{path} lacks adapter tensor {missing[0]!r} "
                         f"({len(missing)} missing)")
    if spec is None:
        enable_lora(layer, settings["rank"], settings["alpha"], settings["targets"])
    for name, var in adapter_weights(layer).items():
        var.assign(file.get(name).astype("float32"))
    return layer
