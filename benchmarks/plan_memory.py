"""The memory planner (`kzoo plan`) against XLA's own figures for the compiled train step.

For each shape, JAX compiles one step (forward, float32 cross-entropy, gradients of every
trainable weight) and reports its memory analysis: `output_size_in_bytes` (the gradients) and
`temp_size_in_bytes` (what the step holds besides its inputs and outputs: the activations kept
for the backward pass and the backward's own temporaries). The planner's `gradients` and
`activations` for the same shape sit beside them, with their ratio. Weights and optimizer state
are checked exactly against real arrays in tests/training/test_plan.py.

`--grid` measures 30 shapes (five presets x six batch/length pairs) instead, and adds the best
any estimate linear in the planner's terms could do: a least-squares fit, per shape, of XLA's
temp bytes on (layers x tokens x hidden, layers x tokens x feed-forward width, layers x tokens x
heads x length, tokens x heads x length, tokens x vocabulary), free coefficients, relative error
minimised. Its largest error shows how far XLA's buffer assignment is from any such formula:
its temp bytes are not linear in the batch (gpt_mini at length 128: 2 rows 37.8 MiB, 8 rows
255 MiB, 6.8x for 4x the rows).

Run: `python benchmarks/plan_memory.py [--grid]` (JAX; a minute on 2 cores, five with --grid)
"""

import argparse
import os

os.environ["KERAS_BACKEND"] = "jax"

from _common import report  # noqa: E402

SHAPES = [("gpt_nano", 8, 128), ("gpt_baby", 8, 256), ("llama_baby", 8, 256),
          ("gpt_mini", 4, 256), ("llama_mini", 8, 256), ("gpt_baby", 2, 1024)]


def measure(preset: str, rows: int, length: int) -> dict:
    import jax
    import jax.numpy as jnp

    from kzoo.models import CausalLM
    from kzoo.training.plan import plan

    context = max(length, 256)
    model = CausalLM.from_preset(preset, max_sequence_length=context, attention_impl="einsum")
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def loss(trainable, ids):
        logits, _ = model.stateless_call(trainable, frozen, ids)  # (rows, length, vocab)
        logps = jax.nn.log_softmax(logits.astype("float32"))
        return -jnp.mean(jnp.take_along_axis(logps, ids[..., None], -1))

    ids = jnp.zeros((rows, length), "int32")
    memory = jax.jit(jax.value_and_grad(loss)).lower(trainable, ids).compile().memory_analysis()
    planned = plan(preset, batch_size=rows, sequence_length=length,
                   max_sequence_length=context).per_device
    mib = 2**20
    return {"preset": preset, "rows": rows, "length": length,
            "xla_gradients_mib": memory.output_size_in_bytes / mib,
            "planned_gradients_mib": planned["gradients"] / mib,
            "xla_temp_mib": memory.temp_size_in_bytes / mib,
            "planned_activations_mib": planned["activations"] / mib,
            "activations_ratio": planned["activations"] / memory.temp_size_in_bytes,
            "_terms": linear_terms(preset, rows, length, context)}


GRID = [(preset, rows, length)
        for preset in ("gpt_nano", "gpt_baby", "llama_baby", "gpt_mini", "llama_mini")
        for rows, length in ((2, 128), (8, 128), (4, 256), (8, 256), (2, 512), (2, 1024))]


def linear_terms(preset: str, rows: int, length: int, context: int) -> list[float]:
    """The planner's terms for one shape, in float32 bytes (see the module docstring)."""
    from kzoo.training.plan import model_arguments

    args = model_arguments(preset, max_sequence_length=context)
    tokens, layers = rows * length, args["num_layers"]
    return [4.0 * t for t in (layers * tokens * args["hidden_dim"],
                              layers * tokens * args["intermediate_dim"],
                              layers * tokens * args["num_heads"] * length,
                              tokens * args["num_heads"] * length,
                              tokens * args["vocab_size"])]


def best_linear_fit(rows: list[dict]) -> dict:
    """A least-squares fit of XLA's temp bytes on the terms (relative errors, free
    coefficients): about as close as any formula linear in them gets."""
    import numpy as np

    terms = np.array([row["_terms"] for row in rows])
    temp = np.array([row["xla_temp_mib"] * 2**20 for row in rows])
    coef, *_ = np.linalg.lstsq(terms / temp[:, None], np.ones(len(rows)), rcond=None)
    ratio = terms @ coef / temp
    return {"coefficients": [round(float(c), 3) for c in coef],
            "largest relative error": round(float(np.abs(ratio - 1).max()), 3),
            "shapes within 10%": int((np.abs(ratio - 1) <= 0.10).sum()), "shapes": len(rows)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="store_true", help="30 shapes and the best linear fit")
    grid = parser.parse_args().grid
    rows = [measure(*shape) for shape in (GRID if grid else SHAPES)]
    settings = {"backend": "jax", "attention_impl": "einsum", "dtype": "float32"}
    ratios = [row["activations_ratio"] for row in rows]
    settings["planner within 10%"] = f"{sum(abs(r - 1) <= 0.10 for r in ratios)} of {len(rows)}"
    settings["planner ratio range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    if grid:
        settings["best linear fit"] = best_linear_fit(rows)
    for row in rows:
        del row["_terms"]
    report("plan_memory_grid" if grid else "plan_memory", rows, settings)


if __name__ == "__main__":
    main()
