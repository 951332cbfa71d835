"""SFT, its memory and precision options, the NaN guard and generation under fsdp on JAX.

One child with 4 host devices trains llama_nano with `SFTModel` (a custom train step) through
`fit` for 4 steps on one device and under fsdp on a 2x2 mesh, from the same weights, two ways:
float32 with remat and gradient accumulation over 2 batches ("memory"), and under
mixed_bfloat16. The fourth batch of the memory runs carries a NaN weight: `NaNGuard` stops both
there and restores the weights of step 3. Each fsdp run's losses equal the one-device run's
with the same option; every weight keeps its layout (after the guard's restore too), every
optimizer variable (AdamW slots, gradient accumulators) has its weight's sharding, and the
memory runs' train step (remat, accumulation) compiled with its output shardings left to XLA
takes and hands back every split variable in its variable's sharding (no silent gather).
Sampling from the sharded model with a seed gives the tokens and log-probs of the one-device
model. (Plain fsdp training, without these options, is checked in test_sharding.py and
test_sharding_dpo.py.)
"""

import json
import sys

import numpy as np
import pytest

from kzoo.training.layouts import variable_axes
from tests.helpers import installed, run_backend_children, seed_without_tensorflow

VOCAB, SEQ, BATCH, STEPS, USED = 256, 16, 8, 4, 16
PRESET = "llama_nano"
MESH = {"batch": 2, "model": 2}
# option -> (CausalLM dtype, remat, gradient accumulation steps)
OPTIONS = {"memory": ("float32", True, 2), "mixed": ("mixed_bfloat16", False, 1)}


def _data(nan_in_last: bool):
    """(x, y, weight), rows of arithmetic progressions modulo USED (the loss falls within a
    few steps); the response is the second half. `nan_in_last`: the last batch's first row
    weighs NaN, so that step's loss is NaN."""
    rng = np.random.RandomState(0)
    start, step = rng.randint(0, USED, (2, STEPS * BATCH, 1))
    tokens = (start + step * np.arange(SEQ + 1)) % USED  # (rows, seq + 1)
    weight = np.zeros((STEPS * BATCH, SEQ), "float32")
    weight[:, SEQ // 2:] = 1.0
    if nan_in_last:
        weight[(STEPS - 1) * BATCH, -1] = np.nan
    return tokens[:, :-1], tokens[:, 1:], weight


def _train(option, layout, initial):
    import keras

    from kzoo.alignment.sft import SFTModel
    from kzoo.models import CausalLM
    from kzoo.training import NaNGuard
    from kzoo.training.distribute import get_strategy, lay_out, run_scope

    dtype, remat, accumulate = OPTIONS[option]
    strategy = get_strategy(layout or "none", mesh=MESH if layout else None)
    lay_out(strategy, PRESET, vocab_size=VOCAB, max_sequence_length=SEQ)
    x, y, weight = _data(nan_in_last=option == "memory")
    losses = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
    with run_scope(strategy):
        policy = CausalLM.from_preset(PRESET, vocab_size=VOCAB, max_sequence_length=SEQ,
                                      dtype=dtype)
        policy.build((None, SEQ))
        policy.set_weights(initial)
        policy.remat = remat
        sft = SFTModel(policy)
        sft.compile(optimizer=keras.optimizers.AdamW(
            1e-2, gradient_accumulation_steps=accumulate if accumulate > 1 else None))
        guard = NaNGuard(policy, keys=("loss",))
        sft.fit(x, y, sample_weight=weight, batch_size=BATCH, epochs=1, shuffle=False,
                verbose=0, callbacks=[record, guard])
    return sft, losses, guard, (x[:BATCH], y[:BATCH], weight[:BATCH])


def _spec(variable):
    spec = tuple(getattr(variable.value.sharding, "spec", ()))
    return list(spec + (None,) * (len(variable.shape) - len(spec)))


def _slots(sft):
    """[(weight path, optimizer variable name, same sharding)] of every optimizer variable
    made from a weight (AdamW's momentum and velocity, the gradient accumulator)."""
    out = []
    for v in sft.trainable_variables:
        prefix = v.path.replace("/", "_") + "_"
        for slot in sft.optimizer.variables:
            if slot.name.startswith(prefix):
                out.append([v.path, slot.name[len(prefix):], slot.value.sharding
                            .is_equivalent_to(v.value.sharding, len(v.shape))])
    return out


def _compiled_step(sft, data):
    """The train step compiled with its output shardings left to XLA: (split inputs, those
    whose input sharding is not their variable's, those not handed back as they came)."""
    import jax

    groups = (sft.trainable_variables, sft.non_trainable_variables, sft.optimizer.variables,
              sft.metrics_variables)
    state = tuple([v.value for v in group] for group in groups)
    compiled = jax.jit(sft.train_step).lower(state, data).compile()
    # (state, data) in, (logs, new state) out: the state's four groups, flattened
    inputs = [s for group in compiled.input_shardings[0][0] for s in group]
    outputs = [s for group in compiled.output_shardings[1] for s in group]
    variables = [v for group in groups for v in group]
    assert len(inputs) == len(outputs) == len(variables)
    split = {id(v) for v in variables if len(v.shape) and not v.value.sharding.is_fully_replicated}
    ins = [v.path for v, sharding in zip(variables, inputs)
           if len(v.shape) and not sharding.is_equivalent_to(v.value.sharding, len(v.shape))]
    # Whole inputs (norms) may come out split, XLA's choice: only the split could be gathered
    outs = [v.path for v, sharding in zip(variables, outputs)
            if id(v) in split and not sharding.is_equivalent_to(v.value.sharding, len(v.shape))]
    return len(split), ins, outs


def _generate(policy):
    from kzoo.generation import Generator

    # sampled (the same seed, so the same uniforms): greedy gives one token again and again
    result = Generator(policy, sampler="random").generate(
        [[3, 5, 7, 9], [1, 2]], max_new_tokens=8, return_logprobs=True, seed=0)
    return [list(map(int, row)) for row in result.token_ids], np.asarray(
        result.logprobs, "float64").tolist()


def child(out_path):
    from kzoo.models import CausalLM

    seed_without_tensorflow(0)
    model = CausalLM.from_preset(PRESET, vocab_size=VOCAB, max_sequence_length=SEQ)
    model.build((None, SEQ))
    initial = model.get_weights()
    out = {}
    for option in OPTIONS:
        for layout in (None, "fsdp"):
            sft, losses, guard, data = _train(option, layout, initial)
            name = f"{option}_{layout or 'single'}"
            out[name] = {"losses": losses, "stopped_at": guard.stopped_at}
            if option == "memory":  # one update from the random start: a flat distribution
                out[name]["weights"] = [w.tolist() for w in sft.policy.get_weights()[:3]]
                out[name]["generated"] = _generate(sft.policy)
            if layout:
                out[name]["specs"] = [[v.path, _spec(v)] for v in sft.policy.weights]
                out[name]["slots"] = _slots(sft)
            if layout and option == "memory":  # its step holds the others' (5 s a compile)
                out[name]["step"] = _compiled_step(sft, data)
    with open(out_path, "w") as f:
        json.dump(out, f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not installed(("jax",)):
        pytest.skip("jax is not installed")
    out = tmp_path_factory.mktemp("sharded_features") / "out.json"
    kids = run_backend_children(["-m", "tests.training.test_sharding_features", "child",
                                 str(out)], backends=("jax",),
                                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    kids["jax"].check()
    return json.loads(out.read_text())


# float32: one device and the mesh add in another order (~3e-7); bfloat16 sums: ~3e-4
TOLERANCE = {"memory": 1e-5, "mixed": 2e-3}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_fsdp_losses_equal_one_device_with_the_same_option(runs, option):
    ref, got = runs[f"{option}_single"]["losses"], runs[f"{option}_fsdp"]["losses"]
    assert len(ref) == len(got) == STEPS
    if option == "memory":  # the NaN batch, last: see the guard's test
        assert np.isnan(ref.pop()) and np.isnan(got.pop())
    assert ref[-1] < ref[0] - 0.05  # the steps teach the model something
    np.testing.assert_allclose(got, ref, rtol=TOLERANCE[option])


def test_the_options_change_the_run(runs):
    # mixed updates at every step (bfloat16 products), memory at every second (accumulation):
    # the runs differ, so each equality above is of its own option
    memory, mixed = runs["memory_single"]["losses"], runs["mixed_single"]["losses"]
    assert memory[0] == pytest.approx(mixed[0], rel=1e-4)  # the same start
    assert abs(memory[2] - mixed[2]) > 0.2


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_weight_and_optimizer_variable_keeps_its_sharding(runs, option):
    expected = variable_axes("fsdp", PRESET, MESH["model"], vocab_size=VOCAB,
                             max_sequence_length=SEQ)
    run = runs[f"{option}_fsdp"]
    assert len(run["specs"]) == len(expected)
    for path, spec in run["specs"]:
        assert tuple(spec) == expected[path.split("/", 1)[1]], (option, path)
    kinds = {kind for _, kind, _ in run["slots"]}
    assert kinds == ({"momentum", "velocity", "gradient_accumulator"} if option == "memory"
                     else {"momentum", "velocity"})
    assert len(run["slots"]) == len(kinds) * len(expected)
    assert [s for s in run["slots"] if not s[2]] == []
    if option != "memory":
        return
    split, inputs, outputs = run["step"]
    # every split weight and its split slots (the model axis divides each kernel)
    assert split == (1 + len(kinds)) * sum("model" in axes for axes in expected.values())
    assert inputs == [] and outputs == []


def test_the_nan_guard_stops_the_sharded_run_and_restores_step_3(runs):
    single, fsdp = runs["memory_single"], runs["memory_fsdp"]
    assert single["stopped_at"] == fsdp["stopped_at"] == [0, STEPS - 1]
    for got, ref in zip(fsdp["weights"], single["weights"]):
        assert np.all(np.isfinite(got))
        # Adam divides by the gradients' size: their ~1e-7 rounding moves a weight ~1e-6
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)


def test_generation_from_the_sharded_model_equals_one_device(runs):
    tokens, logprobs = runs["memory_fsdp"]["generated"]
    ref_tokens, ref_logprobs = runs["memory_single"]["generated"]
    assert tokens == ref_tokens and len(tokens) == 2 and len(tokens[0]) == 8
    assert len(set(tokens[0] + tokens[1])) > 8  # sampled, varied: not one token repeated
    np.testing.assert_allclose(logprobs, ref_logprobs, atol=1e-4)


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(sys.argv[2])
