"""The memory planner (`kzoo plan`) against XLA's own figures for the compiled train step.

For each shape, JAX compiles one step (forward, float32 cross-entropy, gradients of every
trainable weight) and reports its memory analysis: `output_size_in_bytes` (the gradients) and
`temp_size_in_bytes` (what the step holds besides its inputs and outputs: the activations kept
for the backward pass and the backward's own temporaries). The planner's `gradients` and
`activations` for the same shape sit beside them, with their ratio. Weights and optimizer state
are checked exactly against real arrays in tests/training/test_plan.py.

Run: `python benchmarks/plan_memory.py` (JAX; a minute on 2 cores)
"""

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
            "activations_ratio": planned["activations"] / memory.temp_size_in_bytes}


def main():
    rows = [measure(*shape) for shape in SHAPES]
    report("plan_memory", rows, {"backend": "jax", "attention_impl": "einsum",
                                 "dtype": "float32"})


if __name__ == "__main__":
    main()
