"""The memory planner: bytes per device of a training run, before any weight is made.

For a `CausalLM` configuration (a preset, a Hugging Face folder, or arguments), a device mesh
`(batch, model)`, a layout, a batch, a sequence length and the memory options, `plan()` counts:
weights, AdamW state (two slots per variable, sharded like it), gradients, and an estimate of the
activations a train step keeps for the backward pass; whether that fits a device; and the run's
training compute (about 6 x parameters x tokens FLOPs), with the time it takes at a device's
peak and, as the seed puts it, for a person doing one operation a second.

Weights, optimizer state and gradients are exact (the variable list is derived from the
arguments; tests compare it with built models). Activations are an estimate: the tensors each
block keeps for its backward pass, counted for kzoo's block (benchmarks/plan_memory.py
compares it with XLA's own figure for the compiled step).

Layouts (the names of the recipes' `train.distribution`):
- `data_parallel`: every device holds every variable; the batch is split over all devices.
- `fsdp`: every kernel and embedding split along the `model` axis (its first axis the model
  size divides), norms and biases replicated; the batch split along `batch`.
- `tensor_parallel`: attention heads and feed-forward columns split along `model` (Megatron),
  so their activations are split too; embeddings split along the hidden axis; norms
  replicated.

Example:
```python
from kzoo.training.plan import plan
report = plan("gpt2_124m", mesh={"batch": 1, "model": 8}, layout="fsdp", batch_size=8,
              sequence_length=1024)
report.per_device["weights"] / 2**20   # ~ 60 MiB of 475
print(report.summary())
```
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

LAYOUTS = ("data_parallel", "fsdp", "tensor_parallel")
MESH_AXES = ("batch", "model")  # a 2-D device mesh: data rows x model shards
PRECISIONS = {"float32": (4, 4), "mixed_bfloat16": (4, 2), "bfloat16": (2, 2)}  # (vars, compute)
SECONDS_PER_YEAR = 365.25 * 24 * 3600


@dataclass(frozen=True)
class Variable:
    """One weight: its path in the model, its shape, and how tensor parallelism splits it.

    `split` is the axis tensor parallelism splits: the last for projections whose outputs are
    heads or feed-forward units (and their biases), the first for those whose inputs are, the
    vocabulary axis of the embedding and output head; None: replicated (norms, the biases of
    row-split projections, learned positions). Embeddings split along the hidden axis.
    """

    path: str
    shape: tuple[int, ...]
    split: int | None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def model_arguments(source, **overrides) -> dict:
    """Complete `CausalLM` arguments (defaults filled in) from a preset name, a Hugging Face
    folder, a dict of arguments or a built model.

    Example:
    ```python
    model_arguments("llama_nano")["num_kv_heads"]   # 2
    ```
    """
    from pathlib import Path

    from kzoo.models import CausalLM, get_preset

    if hasattr(source, "get_config"):
        args = source.get_config()
    elif isinstance(source, dict):
        args = dict(source)
    elif Path(str(source)).is_dir():
        from kzoo.interop.hf import read_config
        from kzoo.interop.hf_config import kzoo_args_from_hf

        args = kzoo_args_from_hf(read_config(source), str(Path(source) / "config.json"))[0]
    else:
        args = get_preset(str(source))
    args = {**args, **overrides}
    args.pop("description", None)
    signature = inspect.signature(CausalLM.__init__).parameters
    defaults = {name: p.default for name, p in signature.items()
                if p.default is not inspect.Parameter.empty}
    full = {**defaults, **{k: v for k, v in args.items() if k in defaults or k in (
        "vocab_size", "num_layers", "num_heads", "hidden_dim")}}
    if full.get("num_kv_heads") is None:
        full["num_kv_heads"] = full["num_heads"]
    if full.get("head_dim") is None:
        full["head_dim"] = full["hidden_dim"] // full["num_heads"]
    if full.get("intermediate_dim") is None:
        from kzoo.models._lm_arguments import default_intermediate_dim

        full["intermediate_dim"] = default_intermediate_dim(full["hidden_dim"],
                                                             full["activation"])
    return full


def variables(args: dict) -> list[Variable]:
    """Every weight a `CausalLM` built from complete `args` holds (see `model_arguments`)."""
    from kzoo.layers.activations import is_gated

    h, hd, inner = args["hidden_dim"], args["head_dim"], args["intermediate_dim"]
    q, kv = args["num_heads"] * hd, args["num_kv_heads"] * hd
    bias = args["use_bias"]
    qkv_bias = bias if args.get("qkv_bias") is None else args["qkv_bias"]
    out_bias = bias if args.get("attention_output_bias") is None else args["attention_output_bias"]
    ffn_bias = bias if args.get("feedforward_bias") is None else args["feedforward_bias"]
    gated = is_gated(args["activation"])

    def norm(path, width=h):
        if args["norm"] == "layernorm":
            found = [Variable(path + "/gamma", (width,), None)]
            return found + ([Variable(path + "/beta", (width,), None)] if bias else [])
        return [Variable(path + "/scale", (width,), None)]

    # Embeddings split along the hidden axis: vocabularies (GPT-2's 50,257) rarely divide.
    found = [Variable("token_embedding/embeddings", (args["vocab_size"], h), 1)]
    if args["position_embedding"] == "learned":
        found.append(Variable("position_embedding/embeddings",
                              (args["max_sequence_length"], h), None))
    for i in range(args["num_layers"]):
        b = f"block_{i}/"
        found.append(Variable(b + "attention/query_key_value/kernel", (h, q + 2 * kv), 1))
        if qkv_bias:
            found.append(Variable(b + "attention/query_key_value/bias", (q + 2 * kv,), 0))
        found.append(Variable(b + "attention/attention_output/kernel", (q, h), 0))
        if out_bias:
            found.append(Variable(b + "attention/attention_output/bias", (h,), None))
        if args.get("qk_norm"):
            found += norm(b + "attention/query_norm", hd) + norm(b + "attention/key_norm", hd)
        up = 2 * inner if gated else inner
        found.append(Variable(b + "feedforward/up/kernel", (h, up), 1))
        if ffn_bias:
            found.append(Variable(b + "feedforward/up/bias", (up,), 0))
        found.append(Variable(b + "feedforward/down/kernel", (inner, h), 0))
        if ffn_bias:
            found.append(Variable(b + "feedforward/down/bias", (h,), None))
        found += norm(b + "attention_norm") + norm(b + "feedforward_norm")
        if args.get("post_norms"):
            found += norm(b + "post_attention_norm") + norm(b + "post_feedforward_norm")
    found += norm("final_norm")
    if not args["tie_embeddings"]:
        found.append(Variable("token_embedding/reverse_embeddings", (h, args["vocab_size"]), 0))
    return found


def _divisor_refusal(variable: Variable, axis, model: int, layout: str) -> str:
    return (f"the model axis ({model}) does not divide weight {variable.path} of shape "
            f"{variable.shape} along {axis} ({layout}); pick a model size dividing it")


def shard_fraction(variable: Variable, layout: str, model: int) -> float:
    """The share of `variable` one device holds under `layout` with a model axis of `model`.

    Raises:
        ValueError: one line naming the weight, its shape and the axis the model size does not
            divide.
    """
    if model == 1 or layout == "data_parallel":
        return 1.0
    if layout == "fsdp":
        if len(variable.shape) < 2:
            return 1.0  # norms and biases: small, replicated
        if any(size % model == 0 for size in variable.shape):
            return 1.0 / model
        raise ValueError(_divisor_refusal(variable, "any axis", model, layout))
    # tensor_parallel
    if variable.split is None:
        return 1.0
    if variable.shape[variable.split] % model:
        raise ValueError(_divisor_refusal(variable, f"axis {variable.split}", model, layout))
    return 1.0 / model


def scores_per_token(args: dict, sequence_length: int) -> float:
    """Attention tensors of (heads x sequence) a block keeps per token (einsum path): the
    scores, the masked scores and the probabilities."""
    return 3 * args["num_heads"] * sequence_length


def activation_bytes(args: dict, rows: int, sequence_length: int, compute_bytes: int,
                     model: int, layout: str, remat: bool) -> int:
    """Estimated bytes of what a train step keeps for its backward pass on one device.

    `rows` is the per-device batch. Per block and token kzoo's block keeps: the block input,
    two norm outputs (and two more with post norms), q/k/v, the attention context, the
    attention output, the feed-forward input and hidden (two hidden tensors when gated, one
    after the activation), and three (heads x sequence) attention tensors (`scores_per_token`).
    The backward pass adds, at its peak, one block's gradients of the scores and
    probabilities; the head keeps the float32 logits and their softmax. With remat a block
    keeps its input only, plus one block's full set while it is recomputed. The scores assume
    the einsum attention path; a fused kernel keeps none (`Plan.notes` gives their share).
    """
    from kzoo.layers.activations import is_gated

    h, hd = args["hidden_dim"], args["head_dim"]
    heads, kv_heads = args["num_heads"], args["num_kv_heads"]
    inner = args["intermediate_dim"]
    split = model if layout == "tensor_parallel" else 1
    norms = 4 if args.get("post_norms") else 2
    per_token = (
        (1 + norms + 2) * h  # block input, norm outputs, attention output, feed-forward input
        + ((heads + 2 * kv_heads) * hd + heads * hd) / split  # q, k, v and the context
        + (3 if is_gated(args["activation"]) else 2) * inner / split  # hidden(s), activated
        + scores_per_token(args, sequence_length) / split
    )
    tokens = rows * sequence_length
    block = per_token * tokens * compute_bytes
    if remat:
        kept = args["num_layers"] * tokens * h * compute_bytes + block
    else:
        kept = args["num_layers"] * block
    backward_peak = 2 * heads * sequence_length / split * tokens * compute_bytes
    logits = 2 * tokens * args["vocab_size"] * 4  # float32 logits and their softmax
    return int(kept + backward_peak + logits)


@dataclass
class Plan:
    """What one device holds for a training run (bytes), and the run's compute.

    `per_device`: weights, optimizer (AdamW's two slots), gradients, activations, total.
    `parameters`: the model's parameter count. `flops`: 6 x parameters x tokens of the run.
    """

    parameters: int
    devices: int
    per_device: dict
    flops: float
    fits: bool | None
    device_memory: float | None
    notes: list = field(default_factory=list)

    def summary(self) -> str:
        """A table of the bytes per device, the verdict and the compute, as `kzoo plan` prints."""
        gib = 2**30
        lines = [f"parameters: {self.parameters:,} ({self.parameters * 4 / gib:.2f} GiB in "
                 f"float32); devices: {self.devices}",
                 "per device:"]
        for key in ("weights", "optimizer", "gradients", "activations", "total"):
            lines.append(f"  {key:<12}{self.per_device[key] / gib:10.3f} GiB")
        if self.device_memory is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"{verdict} a device of {self.device_memory / gib:.1f} GiB")
        lines += self.notes
        return "\n".join(lines)


def check_mesh(mesh, where: str = "mesh") -> dict:
    """`mesh` as `{"batch": N, "model": M}` of positive ints, or a one-line ValueError naming
    `where` and the value."""
    if not isinstance(mesh, dict) or set(mesh) != set(MESH_AXES) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in mesh.values()):
        raise ValueError(f"{where} must be {{batch: N, model: M}} with positive integers; "
                         f"got {mesh!r}")
    return {"batch": mesh["batch"], "model": mesh["model"]}


def plan(source, mesh: dict | None = None, layout: str = "data_parallel", batch_size: int = 8,
         sequence_length: int | None = None, precision: str = "float32", remat: bool = False,
         device_memory_gib: float | None = None, tokens: int | None = None,
         peak_tflops: float | None = None, **overrides) -> Plan:
    """Bytes per device of training `source` on a mesh, and the run's compute.

    Args:
        source: str | dict | CausalLM. a preset name, a Hugging Face folder, arguments or a model.
        mesh: dict or None. `{"batch": N, "model": M}`; None: one device.
        layout: str. one of `LAYOUTS`.
        batch_size: int. the global batch (rows per step), split along `batch`.
        sequence_length: int or None. tokens per row; None: the model's context.
        precision: str. one of `PRECISIONS` (variables stay float32 under mixed_bfloat16).
        remat: bool. activation checkpointing (a block keeps only its input).
        device_memory_gib: float or None. a device's memory, for the verdict.
        tokens: int or None. the run's training tokens, for the compute figures.
        peak_tflops: float or None. a device's peak, for the time at peak.
        **overrides: `CausalLM` arguments replacing the source's.

    Raises:
        ValueError: one line: an unknown layout or precision (the allowed ones listed), a mesh
            that is not two positive sizes, a batch the batch axis does not divide, a weight the
            model axis does not divide (named with its shape and axis).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    mesh = check_mesh({"batch": 1, "model": 1} if mesh is None else mesh)
    batch_axis, model = mesh["batch"], mesh["model"]
    if layout == "data_parallel":
        batch_axis, model = batch_axis * model, 1  # every device is a data replica
    if batch_size % batch_axis:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {batch_axis} data "
                         "replicas of the mesh")
    args = model_arguments(source, **overrides)
    sequence_length = sequence_length or args["max_sequence_length"]
    var_bytes, compute_bytes = PRECISIONS[precision]
    found = variables(args)
    held = sum(v.size * shard_fraction(v, layout, model) for v in found)
    weights = int(held * var_bytes)
    per_device = {"weights": weights, "optimizer": 2 * weights, "gradients": weights,
                  "activations": activation_bytes(args, batch_size // batch_axis,
                                                  sequence_length, compute_bytes, model, layout,
                                                  remat)}
    per_device["total"] = sum(per_device.values())
    parameters = sum(v.size for v in found)
    run_tokens = tokens if tokens is not None else batch_size * sequence_length
    flops = 6.0 * parameters * run_tokens
    memory = None if device_memory_gib is None else device_memory_gib * 2**30
    rows, split = batch_size // batch_axis, model if layout == "tensor_parallel" else 1
    scores = scores_per_token(args, sequence_length) / split * rows * sequence_length * (
        compute_bytes * (1 if remat else args["num_layers"]))
    notes = [f"activations assume einsum attention; its scores are {scores / 2**30:.3f} GiB of "
             "them (a fused attention kernel keeps none)",
             f"training compute: {flops:.3g} FLOPs for {run_tokens:,} tokens (6 x parameters "
             "x tokens)"]
    if peak_tflops:
        seconds = flops / (peak_tflops * 1e12 * mesh["batch"] * mesh["model"])
        notes.append(f"  at {peak_tflops:g} TFLOP/s per device, all devices busy: "
                     f"{seconds:.3g} s")
    notes.append(f"  for a person doing one operation a second: "
                 f"{flops / SECONDS_PER_YEAR:.3g} years")
    return Plan(parameters, mesh["batch"] * mesh["model"], per_device, flops,
                None if memory is None else per_device["total"] <= memory, memory, notes)


__all__ = ["LAYOUTS", "PRECISIONS", "Plan", "Variable", "activation_bytes", "model_arguments",
           "plan", "shard_fraction", "variables"]
