"""DPO's custom train step (kzoo.backend.stateful_step) under sharded layouts on JAX.

One child with 8 host devices trains llama_nano with DPO against a frozen reference for 4
steps on one device, under tensor_parallel on a 2x4 mesh and under fsdp on a 1x8 mesh, and
with LoRA adapters (reference: the adapters off) on one device and under tensor_parallel: the
logged metrics equal the one-device run's, and after the steps every policy and reference
weight still has its layout and every AdamW slot its weight's sharding; and the custom step
compiled with its output shardings left to XLA (Keras' trainer pins them to the state's) hands
back every split variable in the sharding it came in: no silent gather of the model per step.
"""

import json
import sys

import numpy as np
import pytest

from kzoo.training.layouts import variable_axes
from tests.helpers import installed, run_backend_children, seed_without_tensorflow

VOCAB, SEQ, PAIRS, STEPS = 256, 16, 8, 4
PRESET = "llama_nano"
RUNS = {"single": (None, None), "tp_2x4": ("tensor_parallel", {"batch": 2, "model": 4}),
        "fsdp_1x8": ("fsdp", {"batch": 1, "model": 8})}
LORA_RUNS = ("single", "tp_2x4")


def _pairs():
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, 16, (STEPS, PAIRS, 2, SEQ)).astype("int32")  # (steps, pairs, 2, seq)
    mask = np.zeros_like(tokens, "float32")
    mask[..., SEQ // 2:] = 1.0  # the answers: the second half
    return tokens, mask


def _run(layout, mesh, initial, lora):
    import keras

    from kzoo.alignment.dpo import DPOModel
    from kzoo.models import CausalLM
    from kzoo.models.lora import enable_lora
    from kzoo.training.distribute import get_strategy, lay_out, run_scope

    strategy = get_strategy(layout or "none", mesh=mesh)
    lay_out(strategy, PRESET, vocab_size=VOCAB, max_sequence_length=SEQ)
    tokens, mask = _pairs()
    with run_scope(strategy):
        policy = CausalLM.from_preset(PRESET, vocab_size=VOCAB, max_sequence_length=SEQ)
        reference = CausalLM.from_preset(PRESET, vocab_size=VOCAB, max_sequence_length=SEQ)
        for model, weights in zip((policy, reference), initial):
            model.build((None, SEQ))
            model.set_weights(weights)
        if lora:
            seed_without_tensorflow(1)
            enable_lora(policy, rank=2)
            reference = "adapters_off"
        dpo = DPOModel(policy, reference, beta=0.5)
        dpo.compile(optimizer=keras.optimizers.AdamW(1e-2))
        logs = []
        for step in range(STEPS):
            dpo.reset_metrics()
            logs.append({k: float(v) for k, v in dpo.train_on_batch(
                {"token_ids": tokens[step], "loss_mask": mask[step]}, return_dict=True).items()})
    return dpo, logs, {"token_ids": tokens[0], "loss_mask": mask[0]}


def _changed_by_the_compiled_step(dpo, data):
    """The state variables whose sharding the compiled train step (its output shardings left
    to XLA, unlike Keras' trainer, which pins them) does not keep: a step that gathered the
    model would hand back whole weights."""
    import jax

    groups = (dpo.trainable_variables, dpo.non_trainable_variables, dpo.optimizer.variables,
              dpo.metrics_variables)
    state = tuple([v.value for v in group] for group in groups)
    compiled = jax.jit(dpo.train_step).lower(state, data).compile()
    outputs = compiled.output_shardings[1]  # (logs, new state)
    # Whole inputs (norms, adapters) may come out split, XLA's choice: only the split ones
    # could be gathered. Returns (the split inputs, those not handed back as they came).
    split = [(v, sharding) for group, shardings in zip(groups, outputs)
             for v, sharding in zip(group, shardings)
             if len(v.shape) and not v.value.sharding.is_fully_replicated]
    return len(split), [[v.path, str(sharding)] for v, sharding in split
                        if not sharding.is_equivalent_to(v.value.sharding, len(v.shape))]


def _spec(variable):
    spec = tuple(getattr(variable.value.sharding, "spec", ()))
    return list(spec + (None,) * (len(variable.shape) - len(spec)))


def child(out_path):
    from kzoo.models import CausalLM

    seed_without_tensorflow(0)
    initial = [CausalLM.from_preset(PRESET, vocab_size=VOCAB, max_sequence_length=SEQ)
               for _ in range(2)]
    for model in initial:
        model.build((None, SEQ))
    initial = [model.get_weights() for model in initial]
    out = {}
    for lora in (False, True):
        for name, (layout, mesh) in RUNS.items():
            if lora and name not in LORA_RUNS:
                continue
            dpo, logs, data = _run(layout, mesh, initial, lora)
            # "adam_w_3/causal_lm_4_..._momentum": the names after the optimizer's
            slots = {v.path.split("/", 1)[1]: v for v in dpo.optimizer.variables
                     if len(v.shape)}
            out[("lora_" if lora else "") + name] = {
                "logs": logs,
                "specs": [[v.path, _spec(v)] for v in dpo.variables
                          if "lora" not in v.path and len(v.shape)],
                "adapters_replicated": [v.value.sharding.is_fully_replicated
                                        for v in dpo.trainable_variables if "lora" in v.path],
                "slot_mismatches": [
                    v.path for v in dpo.trainable_variables
                    for suffix in ("momentum", "velocity")
                    if not slots[f"{v.path.replace('/', '_')}_{suffix}"].value.sharding
                    .is_equivalent_to(v.value.sharding, len(v.shape))],
                "trainable": len(dpo.trainable_variables),
                "changed_by_step": (_changed_by_the_compiled_step(dpo, data) if layout
                                    else [0, []]),
            }
    with open(out_path, "w") as f:
        json.dump(out, f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not installed(("jax",)):
        pytest.skip("jax is not installed")
    out = tmp_path_factory.mktemp("sharded_dpo") / "out.json"
    kids = run_backend_children(["-m", "tests.training.test_sharding_dpo", "child", str(out)],
                                backends=("jax",),
                                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    kids["jax"].check()
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", ["tp_2x4", "fsdp_1x8", "lora_tp_2x4"])
def test_sharded_dpo_logs_what_one_device_logs(runs, name):
    ref = runs["lora_single" if name.startswith("lora") else "single"]["logs"]
    got = runs[name]["logs"]
    assert abs(ref[-1]["loss"] - ref[0]["loss"]) > 1e-2  # the steps move the policy
    for key in ref[0]:
        # rewards are differences of summed log-probs (~20 nats): float32 rounds them at ~1e-6
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in ref], rtol=1e-5,
                                   atol=1e-5, err_msg=f"{name} {key}")


@pytest.mark.parametrize("name", ["tp_2x4", "fsdp_1x8", "lora_tp_2x4"])
def test_custom_step_keeps_every_layout_and_slot_sharding(runs, name):
    layout, mesh = RUNS[name.removeprefix("lora_")]
    expected = variable_axes(layout, PRESET, mesh["model"], vocab_size=VOCAB,
                             max_sequence_length=SEQ)
    specs = runs[name]["specs"]
    # policy and reference (or the one policy whose adapters go off): each weight its layout
    assert len(specs) == len(expected) * (1 if name.startswith("lora") else 2)
    for path, spec in specs:
        assert tuple(spec) == expected[path.split("/", 1)[1]], (name, path)
    assert runs[name]["slot_mismatches"] == []
    split, changed = runs[name]["changed_by_step"]
    # split inputs: policy, reference and the policy's two AdamW slots each; with LoRA the
    # frozen base kernels alone (the adapters, and so their slots, are whole)
    n = sum("model" in axes for axes in expected.values())
    assert split == n * (1 if name.startswith("lora") else 4) and changed == []
    if name.startswith("lora"):
        adapters = runs[name]["adapters_replicated"]
        assert len(adapters) == runs[name]["trainable"] > 0 and all(adapters)


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(sys.argv[2])
