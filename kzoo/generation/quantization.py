"""Projection weights laid out for decoding: float32, bfloat16 or int8 copies of a `CausalLM`.

Decoding one token reads every projection matrix once, so its speed is set by how the matrices
are stored. `quantize_for_generation` copies them transposed to (out, in), the layout XLA's CPU
dot reads fastest for one row, in one of three dtypes:

- "float32": the model's values (a layout change only).
- "bfloat16": rounded to bfloat16; the product runs in bfloat16 with float32 inputs rounded.
- "int8": symmetric per-output-channel int8 weights; each activation row is quantized to int8
  with its own abs-max scale and the int8 x int8 product accumulates in int32 (weight and
  activation quantization, as Keras' `Dense.quantize("int8")`: XLA on CPU does not fuse a
  dequantization into its dot, so weight-only int8 is slower than float32 there).

The copy is a snapshot: quantize again after changing the model's weights. Norms and the
input embeddings are read from the model itself.

Example:
```python
from kzoo.generation import Generator
from kzoo.generation.quantization import quantize_for_generation
from kzoo.models import CausalLM
model = CausalLM.from_preset("gpt_nano", vocab_size=256)
weights = quantize_for_generation(model, "int8")
Generator(model, weights=weights).generate([[5, 6, 7]], max_new_tokens=4).token_ids
```
"""

import json
from pathlib import Path

import keras
import ml_dtypes
import numpy as np
from keras import ops

from kzoo import backend

MODES = ("float32", "bfloat16", "int8")
_FORMAT = "kzoo.generation_weights/1"
_INT8_MAX = 127.0
_NUMPY = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "int8": np.int8}


def _numpy(variable):
    """A variable's value as numpy in its own dtype (torch has no numpy bfloat16: the float32
    copy rounds back exactly)."""
    return np.asarray(ops.convert_to_numpy(ops.cast(variable, "float32"))
                      if variable.dtype == "bfloat16" else ops.convert_to_numpy(variable)
                      ).astype(_NUMPY[variable.dtype])


# The names `TransformerBlock.call` gives its `dense` hook, in `_block_projections` order.
BLOCK_PROJECTIONS = ("qkv", "attention_output", "up", "down")


def _block_projections(block) -> tuple:
    attention, ffn = block.attention, block.feedforward
    return attention.query_key_value, attention.output_dense, ffn.up, ffn.down


def projections(model) -> dict:
    """The model's projection layers by name: `{name: (kernel (in, out), bias or None)}`.

    The head is the token embedding's transpose when the embeddings are tied.
    """
    out = {}
    for i, block in enumerate(model.blocks):
        for name, layer in zip(BLOCK_PROJECTIONS, _block_projections(block)):
            out[f"block_{i}/{name}"] = (layer.kernel, layer.bias if layer.use_bias else None)
    embedding = model.token_embedding
    if embedding.tie_weights:
        out["head"] = (None, None)  # (vocab, hidden) is already the (out, in) layout
    else:
        out["head"] = (embedding.reverse_embeddings, None)
    return out


def is_keras_quantized(model) -> bool:
    """Whether `model.quantize(...)` (Keras) replaced some of the model's kernels (Keras
    quantizes the Dense layers: the projections)."""
    layers = [model, *(layer for block in model.blocks for layer in _block_projections(block))]
    return any(getattr(layer.dtype_policy, "quantization_mode", None) for layer in layers)


def _check_model(model):
    if isinstance(model, GenerationWeights):
        raise ValueError(
            f"These weights are already quantized (mode {model.mode!r}); quantize the model "
            "itself: quantize_for_generation(model, mode)."
        )
    if not getattr(model, "built", False) or not hasattr(model, "blocks"):
        raise ValueError(
            f"quantize_for_generation needs a built kzoo CausalLM; got "
            f"{type(model).__name__} (built={getattr(model, 'built', None)})."
        )
    if is_keras_quantized(model):
        raise ValueError(
            "The model was already quantized with Keras' `model.quantize`; generation weights "
            "are made from a float model. Quantize a fresh copy of the float weights instead."
        )


def _quantize_rows(matrix):
    """int8 rows and their float32 scales (one per row, max |row| / 127)."""
    scale = np.max(np.abs(matrix), axis=1) / _INT8_MAX  # (out,)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(matrix / scale[:, None]), -_INT8_MAX, _INT8_MAX).astype(np.int8)
    return q, scale


def _entry(matrix, mode):
    """One projection stored in `mode`; `matrix` is float32 (out, in)."""
    if mode == "int8":
        q, scale = _quantize_rows(matrix)
        return {"kernel": _variable(q), "scale": _variable(scale)}
    dtype = ml_dtypes.bfloat16 if mode == "bfloat16" else np.float32
    return {"kernel": _variable(np.asarray(matrix).astype(dtype))}


def _variable(value):
    # Variables, not constants: a traced program reads them by reference (TensorFlow) or
    # as arguments (JAX) instead of copying hundreds of MB into XLA's compiled literals.
    value = np.asarray(value)
    dtype = "bfloat16" if value.dtype == ml_dtypes.bfloat16 else str(value.dtype)
    return keras.Variable(value.astype(np.float32) if dtype == "bfloat16" else value,
                          dtype=dtype, trainable=False)


class GenerationWeights:
    """Transposed (and possibly quantized) projection weights of one `CausalLM`.

    Made by `quantize_for_generation` or `load_generation_weights`; pass it to
    `Generator(model, weights=...)`.

    Attributes:
        mode: str. one of "float32", "bfloat16", "int8".
        entries: dict. `{name: {"kernel": (out, in) tensor, "scale": (out,) float32 (int8
            only), "bias": (out,) float32 or absent}}`.
    """

    def __init__(self, mode: str, entries: dict):
        self.mode = mode
        self.entries = entries

    @property
    def variables(self) -> list:
        """The Keras variables holding the entries (a compiled program reads them)."""
        return [t for e in self.entries.values() for t in e.values()]

    def nbytes(self) -> int:
        """Bytes of the stored projection weights (what one decode step reads)."""
        return sum(int(np.prod(t.shape)) * np.dtype(_NUMPY[t.dtype]).itemsize
                   for t in self.variables)

    def save(self, path) -> Path:
        """Write a `.safetensors` file (no code, only arrays and a JSON header)."""
        from safetensors.numpy import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"Generation weights are saved as .safetensors. Received: {path}")
        arrays = {}
        for name, entry in self.entries.items():
            for key, tensor in entry.items():
                value = _numpy(tensor)
                if value.dtype == ml_dtypes.bfloat16:  # safetensors.numpy has no bfloat16
                    value = value.view(np.uint16)
                arrays[f"{name}/{key}"] = np.ascontiguousarray(value)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(arrays, str(path), metadata={"format": _FORMAT, "mode": self.mode})
        return path


def quantize_for_generation(model, mode: str = "int8") -> GenerationWeights:
    """Copy `model`'s projection weights into the decode layout, in `mode`.

    Args:
        model: kzoo `CausalLM`. built, not quantized by Keras' `model.quantize`.
        mode: str. "float32", "bfloat16" or "int8".

    Returns a `GenerationWeights` for `Generator(model, weights=...)`.

    Example:
    ```python
    from kzoo.generation.quantization import quantize_for_generation
    from kzoo.models import CausalLM
    weights = quantize_for_generation(CausalLM.from_preset("gpt_nano"), "bfloat16")
    ```
    """
    _check_model(model)
    if mode not in MODES:
        raise ValueError(f"Unknown `mode`: {mode!r}. Valid values: {list(MODES)}")
    entries = {}
    for name, (kernel, bias) in projections(model).items():
        if kernel is None:  # tied head: the embedding matrix, (vocab, hidden)
            matrix = np.asarray(model.token_embedding.embeddings, np.float32)
        else:
            matrix = np.asarray(kernel, np.float32).T  # (in, out) -> (out, in)
        entry = _entry(np.ascontiguousarray(matrix), mode)
        if bias is not None:
            entry["bias"] = _variable(np.asarray(bias, np.float32))
        entries[name] = entry
    return GenerationWeights(mode, entries)


def expected_shapes(model) -> dict:
    """`{tensor name: (shape, numpy dtype name)}` a file for `model` must hold, per mode."""
    shapes = {}
    for name, (kernel, bias) in projections(model).items():
        if kernel is None:
            out_in = tuple(model.token_embedding.embeddings.shape)
        else:
            out_in = tuple(kernel.shape)[::-1]
        shapes[name] = (out_in, None if bias is None else (out_in[0],))
    return shapes


def check_matches(weights, model) -> None:
    """Refuse `weights` that are not a `GenerationWeights` of `model`'s shapes.

    Example: `check_matches(quantize_for_generation(model, "int8"), model)` passes.
    """
    if not isinstance(weights, GenerationWeights):
        raise ValueError(
            "`weights` must be None, 'reference', one of "
            f"{list(MODES)} or GenerationWeights. Received: {type(weights).__name__}"
        )
    for name, (out_in, _) in expected_shapes(model).items():
        entry = weights.entries.get(name)
        if entry is None or tuple(entry["kernel"].shape) != out_in:
            got = None if entry is None else tuple(entry["kernel"].shape)
            raise ValueError(
                f"`weights` do not fit this model: {name!r} kernel is {got}, the model needs "
                f"{out_in}. Quantize this model: quantize_for_generation(model, mode)."
            )


def load_generation_weights(path, model) -> GenerationWeights:
    """Read weights written by `GenerationWeights.save`, checked against `model`'s shapes.

    Args:
        path: str or Path. a `.safetensors` file from `GenerationWeights.save`.
        model: kzoo `CausalLM`. the model they were made from (its shapes are checked).

    Example:
    ```python
    from kzoo.generation.quantization import load_generation_weights
    weights = load_generation_weights("int8.safetensors", model)
    ```
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No generation weights file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # a corrupt header: say which file
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if metadata.get("format") != _FORMAT or metadata.get("mode") not in MODES:
        raise ValueError(
            f"{path}: not kzoo generation weights (metadata {json.dumps(metadata)}); expected "
            f"format {_FORMAT!r} and mode one of {list(MODES)}."
        )
    mode = metadata["mode"]
    kernel_dtype = {"float32": np.float32, "bfloat16": np.uint16, "int8": np.int8}[mode]
    entries, wanted = {}, set()
    for name, (out_in, bias_shape) in expected_shapes(model).items():
        spec = {"kernel": (out_in, kernel_dtype)}
        if mode == "int8":
            spec["scale"] = ((out_in[0],), np.float32)
        if bias_shape is not None:
            spec["bias"] = (bias_shape, np.float32)
        entry = {}
        for key, (shape, dtype) in spec.items():
            full = f"{name}/{key}"
            wanted.add(full)
            if full not in arrays:
                raise ValueError(f"{path}: missing tensor {full!r} for this model.")
            value = arrays[full]
            if tuple(value.shape) != shape or value.dtype != dtype:
                raise ValueError(
                    f"{path}: tensor {full!r} is {value.dtype}{list(value.shape)}; this model "
                    f"needs {np.dtype(dtype)}{list(shape)}."
                )
            entry[key] = _variable(value.view(ml_dtypes.bfloat16) if dtype == np.uint16
                                   else value)
        entries[name] = entry
    extra = sorted(set(arrays) - wanted)
    if extra:
        raise ValueError(f"{path}: tensors this model does not have: {extra[:5]}")
    return GenerationWeights(mode, entries)


def project(x, entry):
    """`x @ W + b` with `W` stored as `entry` (see `GenerationWeights`).

    Args:
        x: float tensor. (..., in).
        entry: dict. one of `GenerationWeights.entries`, or `{"kernel": (out, in)}` in float.

    Returns float tensor (..., out) in `x`'s dtype.
    """
    entry = {key: ops.convert_to_tensor(value) for key, value in entry.items()}
    kernel = entry["kernel"]
    dtype = keras.backend.standardize_dtype(kernel.dtype)
    if dtype == "int8":
        # Each row gets its own scale so one large activation does not flatten the others.
        x32 = ops.cast(x, "float32")
        row_scale = ops.max(ops.abs(x32), axis=-1, keepdims=True)
        row_scale = ops.where(row_scale > 0, row_scale / _INT8_MAX, 1.0)  # (..., 1)
        xq = ops.cast(ops.clip(ops.round(x32 / row_scale), -_INT8_MAX, _INT8_MAX), "int8")
        acc = backend.matmul_transposed(xq, kernel, int_accumulate=True)  # (..., out)
        y = ops.cast(acc, "float32") * row_scale * entry["scale"]
    elif dtype == "bfloat16":
        y = ops.cast(backend.matmul_transposed(ops.cast(x, "bfloat16"), kernel), "float32")
    else:
        y = backend.matmul_transposed(x, ops.cast(kernel, x.dtype))
    if "bias" in entry:
        y = y + ops.cast(entry["bias"], y.dtype)
    return ops.cast(y, x.dtype)
