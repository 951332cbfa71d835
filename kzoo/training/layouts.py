"""Where each weight lives on a `(batch, model)` device mesh: the layouts of sharded training.

A layout is a rule per weight: `(variable, model_size) -> axes`, one mesh axis name (or None)
per axis of the weight, for every `kzoo.training.plan.Variable` a `CausalLM` holds
(`plan.variables(args)` lists them with the axis tensor parallelism splits, so the structure
is written once). The shared rules (`SHARED_RULES`) fit every kzoo family, whose models are
one `CausalLM`; a family whose weights differ gives its own rule for a layout in
`Family.layouts`, and only for the layouts where it differs.

- `fsdp`: every kernel and embedding split along `model` on its first axis the model size
  divides, norms and biases replicated (what `plan.shard_fraction` counts).
- `tensor_parallel` (Megatron): the fused q/k/v and feed-forward up kernels split by columns,
  the attention output and feed-forward down kernels by rows, the embedding and untied head
  along the hidden axis, norms and row-split biases replicated.

Weights no rule names stay replicated: LoRA adapters (`lora_kernel_a/b`), seed states.
`layout_map` turns the rules into a `keras.distribution.LayoutMap` for
`keras.distribution.ModelParallel` (on JAX; see `kzoo.training.distribute`). The split of the
fused q/k/v kernel is by columns, not heads: XLA gathers what a head needs, so the numbers
are the same and only the traffic differs from Megatron's per-head split.

Example:
```python
from kzoo.training.layouts import variable_axes
axes = variable_axes("tensor_parallel", "llama_nano", model=2)
axes["block_0/attention/query_key_value/kernel"]   # (None, 'model')
axes["block_0/attention/attention_output/kernel"]  # ('model', None)
```
"""

from __future__ import annotations

import re

from kzoo.training.plan import (
    MESH_AXES,
    Variable,
    check_mesh,
    model_arguments,
    shard_fraction,
    variables,
)

LAYOUTS = ("fsdp", "tensor_parallel")  # the sharded ones; data_parallel replicates


def fsdp_axes(variable: Variable, model: int) -> tuple:
    """`model` on the first axis of a kernel or embedding that `model` divides; norms and
    biases (one axis) replicated.

    Raises:
        ValueError: one line naming the weight, its shape and the axis none of whose sizes
            `model` divides.
    """
    if len(variable.shape) < 2 or model == 1:
        return (None,) * len(variable.shape)
    shard_fraction(variable, "fsdp", model)  # the planner's refusal, word for word
    axis = next(i for i, size in enumerate(variable.shape) if size % model == 0)
    return tuple("model" if i == axis else None for i in range(len(variable.shape)))


def tensor_parallel_axes(variable: Variable, model: int) -> tuple:
    """`model` on the axis `variable.split` names (columns of q/k/v and up, rows of the
    attention output and down, the hidden axis of embeddings); the rest replicated.

    Raises:
        ValueError: one line naming the weight, its shape and the axis `model` does not divide.
    """
    if variable.split is None or model == 1:
        return (None,) * len(variable.shape)
    shard_fraction(variable, "tensor_parallel", model)
    return tuple("model" if i == variable.split else None for i in range(len(variable.shape)))


SHARED_RULES = {"fsdp": fsdp_axes, "tensor_parallel": tensor_parallel_axes}


def check_layout(layout: str) -> None:
    """One-line ValueError unless `layout` is one of `LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; layouts: {', '.join(LAYOUTS)}")


def family_of(source):
    """The `Family` whose presets hold `source` (a preset name), else None (shared rules)."""
    from kzoo.models.families import list_families

    if isinstance(source, str):
        for family in list_families():
            if source in family.presets:
                return family
    return None


def rule(layout: str, family=None):
    """The rule `(Variable, model) -> axes` of `layout`: the family's own, else the shared."""
    check_layout(layout)
    own = getattr(family, "layouts", None) or {}
    return own.get(layout, SHARED_RULES[layout])


def variable_axes(layout: str, source, model: int, family=None, **overrides) -> dict:
    """{variable path (as in `plan.variables`): axes} of every weight of a `CausalLM`.

    Args:
        layout: str. "fsdp" or "tensor_parallel".
        source: str | dict | CausalLM. a preset name, a Hugging Face folder, arguments or a
            model (`plan.model_arguments`).
        model: int. the size of the mesh's `model` axis.
        family: Family | None. whose rules apply; None: the preset's family, else shared.
        **overrides: `CausalLM` arguments replacing the source's (vocab_size...).

    Raises:
        ValueError: one line: an unknown layout, or a weight `model` does not divide.
    """
    family = family if family is not None else family_of(source)
    axes_of = rule(layout, family)
    args = model_arguments(source, **overrides)
    return {v.path: axes_of(v, model) for v in variables(args)}


def layout_map(layout: str, source, device_mesh, family=None, into=None, **overrides):
    """A `keras.distribution.LayoutMap` on `device_mesh` (axes "batch", "model") holding one
    entry per weight of `source` under `layout` (`variable_axes`); keys match the weight's
    path under any model name ("causal_lm/...", "causal_lm_1/...").

    Args:
        into: LayoutMap | None. a map to fill (one a `ModelParallel` already holds) instead of
            a new one.

    Example:
    ```python
    mesh = keras.distribution.DeviceMesh((2, 4), MESH_AXES, keras.distribution.list_devices())
    layouts = layout_map("fsdp", "gpt_nano", mesh)
    keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch")
    ```
    """
    import keras

    model = dict(zip(device_mesh.axis_names, device_mesh.shape)).get("model", 1)
    found = variable_axes(layout, source, model, family, **overrides)
    result = into if into is not None else keras.distribution.LayoutMap(device_mesh)
    # `key in result` would regex-match (LayoutMap's lookup); its iteration gives the keys.
    present = set(result)
    for path, axes in found.items():
        # Keras matches keys with re.fullmatch: any model-name prefix, this exact path.
        key = r"(?:.*/)?" + re.escape(path)
        if key in present:  # LayoutMap refuses a key twice: a refill replaces it
            del result[key]
        result[key] = keras.distribution.TensorLayout(axes)
    return result


__all__ = ["LAYOUTS", "MESH_AXES", "SHARED_RULES", "check_layout", "check_mesh", "family_of",
           "fsdp_axes", "layout_map", "rule", "tensor_parallel_axes", "variable_axes"]
