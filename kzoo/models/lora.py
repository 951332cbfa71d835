"""LoRA adapters on the Dense projections of kzoo models, built on Keras' own `Dense.enable_lora`.

Each targeted `keras.layers.Dense` gets `lora_kernel_a` (in, rank) and `lora_kernel_b` (rank,
out), float32, A drawn `he_uniform` and B zeros, so a fresh adapter changes nothing. kzoo's
projections (`kzoo.layers.projection.Projection`) compute `x @ W + (alpha / rank) * (x @ A) @ B
+ b`, never the full-size `W + scale * A @ B` Keras' float `Dense` builds (and its full-size
gradient), and can drop out the adapter input (`dropout`); the int8 path is Keras'
`int8(x) @ W_q + (alpha / rank) * (x @ A) @ B`. After `enable_lora` only the adapters are
trainable: embeddings, the output head, norms, biases and the base kernels are frozen.

The targets are the roles of the Dense sublayers: "query_key_value" (the fused q/k/v projection),
"attention_output", "up" (the feed-forward's first projection; gate and up fused when gated) and
"down"; the groups "attention", "ffn" and "all" name several.

Saving:
- `save_lora(layer, path)` writes the adapters alone (a small safetensors file whose metadata
  holds rank, alpha and targets); `load_lora` puts them on a model of the same shape.
- `model.save("x.keras")` MERGES: Keras' `Dense.save_own_variables` writes `W + scale * A @ B`
  as the kernel and no adapters, and `CausalLM`'s config has no LoRA, so the file loads (in safe
  mode) as a plain model with the same logits. Keep the adapters with `save_lora`.
- `load_weights` on a model with adapters is refused: Keras would load merged kernels and zero
  both A and B, after which the adapters get no gradient.

Example:
```python
from kzoo.models import CausalLM
model = CausalLM.from_preset("gpt_nano")
model.enable_lora(rank=8, targets="all")
# ... compile and fit: only the adapters train ...
model.save_lora("adapters.safetensors")
model.merge_lora()          # fold the adapters into the kernels; the model is plain again
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
from keras import ops

from kzoo.layers._checks import fraction, positive_int
from kzoo.layers.projection import Projection

TARGETS = ("query_key_value", "attention_output", "up", "down")
TARGET_GROUPS = {"all": TARGETS, "attention": TARGETS[:2], "ffn": TARGETS[2:]}
FILE_FORMAT = "kzoo-lora"


@dataclasses.dataclass(frozen=True)
class LoRASpec:
    """What `enable_lora` did to a layer: the adapter settings and the variables it froze."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    frozen: tuple = ()  # variables that were trainable before; merge_lora unfreezes them

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def as_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}


def resolve_targets(targets) -> tuple[str, ...]:
    """Target roles from names and groups, in model order.

    Args:
        targets: str or sequence of str. roles in `TARGETS` or groups in `TARGET_GROUPS`.

    Example:
    ```python
    from kzoo.models.lora import resolve_targets
    resolve_targets(["ffn", "query_key_value"])  # ('query_key_value', 'up', 'down')
    ```
    """
    names = [targets] if isinstance(targets, str) else list(targets)
    allowed = list(TARGETS) + list(TARGET_GROUPS)
    wanted = set()
    for name in names:
        if name not in allowed:
            raise ValueError(f"Unknown LoRA target {name!r}. Valid targets: {allowed}")
        wanted.update(TARGET_GROUPS.get(name, (name,)))
    if not wanted:
        raise ValueError(f"`targets` names no layer. Valid targets: {allowed}")
    return tuple(t for t in TARGETS if t in wanted)


def target_layers(layer, targets) -> list[keras.layers.Dense]:
    """The Dense sublayers of `layer` (itself included) whose names are in `targets`."""
    roles = resolve_targets(targets)
    found = [sub for sub in layer._flatten_layers(include_self=True)
             if isinstance(sub, keras.layers.Dense) and sub.name in roles]
    missing = sorted(set(roles) - {sub.name for sub in found})
    if missing:
        raise ValueError(f"{layer.name!r} has no Dense layer for LoRA target(s) {missing}; "
                         f"its Dense layers: {sorted({s.name for s in _dense_layers(layer)})}")
    return found


def _dense_layers(layer):
    return [s for s in layer._flatten_layers(include_self=True)
            if isinstance(s, keras.layers.Dense)]


def lora_spec(layer) -> LoRASpec | None:
    """The `LoRASpec` of a layer or model with adapters, else None."""
    return getattr(layer, "_lora_spec", None)


def _require(layer) -> LoRASpec:
    spec = lora_spec(layer)
    if spec is None:
        raise ValueError(f"{layer.name!r} has no LoRA adapters; call enable_lora first.")
    return spec


def adapter_layers(layer) -> list[keras.layers.Dense]:
    """The Dense sublayers of `layer` that carry adapters."""
    return [s for s in _dense_layers(layer) if getattr(s, "lora_enabled", False)]


def _relative(root, path: str) -> str:
    prefix = root.path + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def adapter_weights(layer) -> dict:
    """Adapter variables by name relative to `layer`, e.g.
    "block_0/attention/query_key_value/lora_kernel_a" -> variable (in, rank)."""
    out = {}
    for dense in adapter_layers(layer):
        for var in (dense.lora_kernel_a, dense.lora_kernel_b):
            out[_relative(layer, var.path)] = var
    return out


def _adapter_shapes(layer, rank: int, targets) -> dict:
    """Names and shapes `enable_lora(layer, rank, targets=targets)` would create."""
    shapes = {}
    for dense in target_layers(layer, targets):
        name = _relative(layer, dense.path)
        in_dim = getattr(dense, "_orig_input_dim", None) or dense._kernel.shape[0]
        shapes[f"{name}/lora_kernel_a"] = (int(in_dim), rank)
        shapes[f"{name}/lora_kernel_b"] = (rank, int(dense.units))
    return shapes


def enable_lora(layer, rank: int, alpha: float | None = None, targets="all",
                dropout: float = 0.0):
    """Add LoRA adapters to the targeted Dense sublayers and freeze every other weight.

    Args:
        layer: a `CausalLM`, `TransformerBlock`, `CausalSelfAttention`, `FeedForward` (or any
            layer holding kzoo's Dense projections), built; may be int8-quantized.
        rank: int. adapter rank r.
        alpha: float or None. the update is scaled by alpha / rank; None: alpha = rank.
        targets: str or sequence of str. roles in `TARGETS` or groups "attention", "ffn",
            "all".
        dropout: float in [0, 1). dropout on the adapter input in training (PEFT's LoRA
            dropout); needs kzoo's `Projection` layers (not a plain `keras.layers.Dense`).

    Returns the layer.

    Example:
    ```python
    from kzoo.models import CausalLM
    from kzoo.models.lora import enable_lora
    model = enable_lora(CausalLM.from_preset("gpt_nano"), rank=4, targets="attention")
    ```
    """
    rank = positive_int("rank", rank)
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float)
                              or not alpha > 0):
        raise ValueError(f"`alpha` must be a positive number or None. Received: alpha={alpha!r}")
    dropout = fraction("dropout", dropout)
    if lora_spec(layer) is not None or adapter_layers(layer):
        where = lora_spec(layer).as_dict() if lora_spec(layer) else "on its Dense layers"
        raise ValueError(f"{layer.name!r} already has LoRA adapters ({where}); merge_lora() "
                         "them or start from a model without adapters.")
    roles = resolve_targets(targets)
    dense_layers = target_layers(layer, roles)
    frozen = tuple(layer.trainable_variables)
    for var in frozen:
        var.trainable = False
    alpha = float(rank if alpha is None else alpha)
    plain = [d.name for d in dense_layers if not isinstance(d, Projection)]
    if dropout and getattr(layer, "remat", False):
        raise ValueError("LoRA `dropout` with remat=True: the recomputed forward pass would "
                         "draw other dropout masks; use one or the other")
    if dropout and plain:
        raise ValueError(f"`dropout` needs kzoo Projection layers; {plain} are plain Dense "
                         f"layers. Received: dropout={dropout!r}")
    for dense in dense_layers:
        dense.enable_lora(rank, lora_alpha=alpha)
        if isinstance(dense, Projection):
            dense.set_lora_dropout(dropout)
    layer._lora_spec = LoRASpec(rank, alpha, roles, frozen)
    _forget_compiled_functions(layer)
    return layer


def _forget_compiled_functions(layer):
    # A model compiled before the change would keep training the old variable set, and a
    # generator traced before it would keep decoding with the old kernels.
    if isinstance(layer, keras.Model):
        layer.train_function = layer.test_function = layer.predict_function = None
    layer.structure_version = getattr(layer, "structure_version", 0) + 1


@contextlib.contextmanager
def lora_disabled(layer):
    """Run `layer` as its base model: the adapters are skipped inside the block.

    It switches Python flags read while a function is traced, so inside one `tf.function`
    (a compiled `train_step`) one call can run with adapters and another without, with no
    retrace from step to step and no second copy of the weights: DPO's reference pass.

    Example:
    ```python
    with lora_disabled(model):
        base_logits = model(token_ids)
    ```
    """
    layers = adapter_layers(layer)
    for dense in layers:
        dense.lora_enabled = False
    try:
        yield layer
    finally:
        for dense in layers:
            dense.lora_enabled = True


def effective_kernel(dense) -> np.ndarray:
    """The float32 kernel a Dense computes with: dequantized (int8) plus its LoRA update."""
    mode = dense.quantization_mode
    if mode is None:
        kernel = ops.cast(dense._kernel, "float32")
    elif mode == "int8":
        # Keras' int8 layout: int8 kernel (in, out) and a per-output scale (out,).
        kernel = ops.cast(dense._kernel, "float32") / ops.cast(dense.kernel_scale, "float32")
    else:
        raise ValueError(f"Dense {dense.path!r} is quantized as {mode!r}; LoRA merging "
                         "supports quantization modes [None, 'int8']")
    if getattr(dense, "lora_enabled", False):
        kernel = kernel + (dense.lora_alpha / dense.lora_rank) * ops.matmul(
            dense.lora_kernel_a, dense.lora_kernel_b)
    return np.asarray(ops.convert_to_numpy(kernel), "float32")


def merge_lora(layer):
    """Fold every adapter into its kernel (W += alpha / rank * A @ B), remove the adapters and
    unfreeze what `enable_lora` froze: the layer is a plain one again, computing the same.

    Float kernels only; an int8 model would requantize the (small) update away: export it
    with `merged_copy` instead.

    Example:
    ```python
    model.merge_lora()
    model.save_hf("tuned")
    ```
    """
    spec = _require(layer)
    layers = adapter_layers(layer)
    quantized = [d.path for d in layers if d.quantization_mode is not None]
    if quantized:
        raise ValueError(f"merge_lora folds adapters into float kernels, but {quantized[0]!r} "
                         "is quantized; use merged_copy(model) for a float32 model")
    for dense in layers:
        merged = effective_kernel(dense)
        dense._kernel.assign(ops.cast(merged, dense._kernel.dtype))
        for var in (dense.lora_kernel_a, dense.lora_kernel_b):
            dense._untrack_variable(var)
        del dense.lora_kernel_a, dense.lora_kernel_b
        dense.lora_enabled = False
        dense.lora_rank = dense.lora_alpha = None
    for var in spec.frozen:
        var.trainable = True
    layer._lora_spec = None
    _forget_compiled_functions(layer)
    return layer


def merged_copy(model):
    """A new float `CausalLM` (same config) whose kernels are `model`'s dequantized kernels
    plus their LoRA updates; `model` is left as it is. How an int8 + LoRA model is exported.

    Example:
    ```python
    merged_copy(model).save_hf("tuned")
    ```
    """
    copy = model.__class__.from_config(model.get_config())
    source = {_relative(model, v.path): v for v in model.weights}
    dense = {_relative(model, d.path): d for d in _dense_layers(model)}
    for var in copy.trainable_weights:  # a fresh model: every parameter is trainable
        name = _relative(copy, var.path)
        owner, leaf = name.rsplit("/", 1)
        if leaf == "kernel" and owner in dense:
            var.assign(effective_kernel(dense[owner]))
        else:
            var.assign(ops.cast(source[name], var.dtype))
    return copy


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


class LoRAMixin:
    """LoRA methods of `CausalLM` (see `kzoo.models.lora`)."""

    def enable_lora(self, rank: int, alpha: float | None = None, targets="all",
                    dropout: float = 0.0):
        """Add LoRA adapters and freeze the rest (see `kzoo.models.lora.enable_lora`).

        Example:
        ```python
        model.enable_lora(8, alpha=16, targets=("query_key_value", "attention_output"))
        ```
        """
        return enable_lora(self, rank, alpha, targets, dropout)

    @property
    def lora_spec(self) -> LoRASpec | None:
        """The adapters' settings, or None without adapters."""
        return lora_spec(self)

    def merge_lora(self):
        """Fold the adapters into the kernels and remove them (see `merge_lora`)."""
        return merge_lora(self)

    def merged_copy(self):
        """A float copy with the adapters folded in, int8 bases dequantized (`merged_copy`)."""
        return merged_copy(self)

    def lora_disabled(self):
        """Context manager: run as the base model, adapters skipped (`lora_disabled`)."""
        return lora_disabled(self)

    def save_lora(self, path) -> Path:
        """Write only the adapters to a safetensors file (see `save_lora`)."""
        return save_lora(self, path)

    def load_lora(self, path):
        """Load adapters written by `save_lora` (see `load_lora`)."""
        return load_lora(self, path)

    def load_weights(self, filepath, *args, **kwargs):
        if lora_spec(self) is not None:
            raise ValueError(
                f"load_weights({str(filepath)!r}) on a model with LoRA adapters: Keras would "
                "zero them (A and B), so they could never train again. Load the weights "
                "first, then enable_lora, and restore adapters with load_lora.")
        return super().load_weights(filepath, *args, **kwargs)
