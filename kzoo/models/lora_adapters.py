"""LoRA adapters on a model in memory: which Dense layers they go on (`TARGETS`), adding them
(`enable_lora`), switching them off for a call (`lora_disabled`) and folding them into the
kernels (`merge_lora`, `merged_copy`).

How the adapters compute, what is frozen and how they are saved: see `kzoo.models.lora`, which
re-exports every name here (and `kzoo.models.lora_files`, the adapters' own file).

Example:
```python
from kzoo.models import CausalLM
from kzoo.models.lora_adapters import adapter_weights, enable_lora, merge_lora
model = enable_lora(CausalLM.from_preset("gpt_nano"), rank=4, targets="ffn")
sorted(adapter_weights(model))[0]   # 'block_0/feedforward/down/lora_kernel_a'
merge_lora(model)                   # a plain model again, computing the same
```
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import numpy as np
from keras import ops

from kzoo.layers._checks import fraction, positive_int
from kzoo.layers.projection import Projection

TARGETS = ("query_key_value", "attention_output", "up", "down")
TARGET_GROUPS = {"all": TARGETS, "attention": TARGETS[:2], "ffn": TARGETS[2:]}


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
