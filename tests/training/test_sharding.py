"""Sharded training on JAX: fsdp and tensor_parallel layouts on a (batch, model) mesh.

The parent (TensorFlow) checks the layouts as data: every weight of every small preset, each
layout's axes against the planner's shard fractions, the family hook, and the one-line
refusals. One JAX child started with 8 host devices (XLA_FLAGS must be set before JAX starts)
then trains gpt_nano and llama_nano for 20 steps on one device, and under fsdp and
tensor_parallel on 2x4, 1x8 and 8x1 meshes from the same initial weights: the losses, the
variables' shardings (the layouts applied), every AdamW slot's sharding (its variable's),
LoRA adapters (replicated) and the bytes each device holds (its addressable shards, against
`kzoo.training.plan.plan`). The LoRA adapters go on the model of the llama_nano
tensor_parallel 2x4 run: a second such run (its compile and 20 steps) would only repeat it.

Run the child by hand: `KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=8
python -m tests.training.test_sharding child OUT.json`.
"""

import json
import sys

import numpy as np
import pytest

from kzoo.models import list_presets
from kzoo.training import plan as planner
from kzoo.training.layouts import (
    LAYOUTS,
    SHARED_RULES,
    check_mesh,
    family_of,
    layout_map,
    variable_axes,
)
from tests.helpers import installed, run_backend_children, seed_without_tensorflow

SMALL = [p for p in list_presets() if p.endswith("_nano")]
STEPS, BATCH, SEQ, VOCAB, USED = 20, 8, 16, 256, 16
MESHES = {"2x4": {"batch": 2, "model": 4}, "1x8": {"batch": 1, "model": 8},
          "8x1": {"batch": 8, "model": 1}}
# On 8x1 (a model axis of 1) both layouts split nothing and compile one program: run it once.
CASES = [(layout, mesh) for layout in ("fsdp", "tensor_parallel") for mesh in MESHES
         if (layout, mesh) != ("tensor_parallel", "8x1")]
MODELS = ("gpt_nano", "llama_nano")
LEARNING_RATE = 3e-3


# ------------------------------------------------------------------------ layouts as data
@pytest.mark.parametrize("preset", SMALL)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_shards_what_the_planner_counts(preset, layout):
    model = 2
    for path, axes in variable_axes(layout, preset, model).items():
        variable = next(v for v in planner.variables(planner.model_arguments(preset))
                        if v.path == path)
        assert len(axes) == len(variable.shape), path
        held = 1 / model if "model" in axes else 1.0
        assert held == planner.shard_fraction(variable, layout, model), (path, axes)
        if axes.count("model"):
            assert variable.shape[axes.index("model")] % model == 0


def test_tensor_parallel_is_megatron_and_fsdp_replicates_norms():
    tp = variable_axes("tensor_parallel", "gpt_nano", 2)
    assert tp["block_0/attention/query_key_value/kernel"] == (None, "model")  # columns
    assert tp["block_0/attention/query_key_value/bias"] == ("model",)
    assert tp["block_0/attention/attention_output/kernel"] == ("model", None)  # rows
    assert tp["block_0/attention/attention_output/bias"] == (None,)
    assert tp["block_0/feedforward/up/kernel"] == (None, "model")
    assert tp["block_0/feedforward/down/kernel"] == ("model", None)
    assert tp["block_0/attention_norm/gamma"] == (None,)
    fsdp = variable_axes("fsdp", "llama_nano", 4)
    assert fsdp["token_embedding/embeddings"] == ("model", None)
    assert fsdp["block_1/feedforward_norm/scale"] == (None,)
    assert all("model" in axes for path, axes in fsdp.items() if "kernel" in path)
    # vocabulary 50,257 (GPT-2's) is odd: the embedding is split on its hidden axis instead
    odd = variable_axes("fsdp", "gpt_nano", 4, vocab_size=50257)
    assert odd["token_embedding/embeddings"] == (None, "model")


def test_a_family_overrides_only_the_layout_it_changes():
    import dataclasses

    family = family_of("llama_nano")
    assert family.name == "llama" and family.layouts == {}
    replicated = dataclasses.replace(
        family, layouts={"tensor_parallel": lambda v, model: (None,) * len(v.shape)})
    assert all(a == (None,) * len(a) for a in variable_axes(
        "tensor_parallel", "llama_nano", 2, family=replicated).values())
    assert variable_axes("fsdp", "llama_nano", 2, family=replicated) == variable_axes(
        "fsdp", "llama_nano", 2)
    assert set(SHARED_RULES) == set(LAYOUTS)


def test_layout_map_matches_paths_under_any_model_name():
    import keras

    # A (1, 2) mesh named on TensorFlow's one CPU twice: only its shape is read here.
    mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"),
                                         keras.distribution.list_devices()[:1] * 2)
    layouts = layout_map("tensor_parallel", "llama_nano", mesh)
    assert layouts["causal_lm_3/block_1/feedforward/up/kernel"].axes == (None, "model")
    assert layouts["causal_lm/block_1/feedforward/up/lora_kernel_a"] is None  # replicated
    assert layouts["causal_lm/final_norm/scale"].axes == (None,)


# ------------------------------------------------------------------------ bad input
def test_a_weight_the_model_axis_does_not_divide_is_named():
    with pytest.raises(ValueError) as error:
        variable_axes("tensor_parallel", "llama_nano", 3)
    message = str(error.value)
    assert "\n" not in message
    assert message == ("the model axis (3) does not divide weight token_embedding/embeddings "
                       "of shape (256, 64) along axis 1 (tensor_parallel); pick a model size "
                       "dividing it")
    with pytest.raises(ValueError, match=r"position_embedding/embeddings of shape \(7, 5\)"):
        variable_axes("fsdp", {**planner.model_arguments("gpt_nano"), "max_sequence_length": 7,
                               "hidden_dim": 5, "num_heads": 1, "vocab_size": 6}, 3)


@pytest.mark.parametrize("mesh", [{"batch": 2}, {"batch": 0, "model": 2}, [2, 4],
                                  {"batch": 2, "model": 2.0}])
def test_a_malformed_mesh_is_one_line(mesh):
    with pytest.raises(ValueError, match=r"^train.mesh must be \{batch: N, model: M\}"):
        check_mesh(mesh, "train.mesh")


def test_fsdp_on_tensorflow_names_the_backend_that_has_it():
    from kzoo.training.distribute import get_strategy

    for name in LAYOUTS:
        with pytest.raises(ValueError) as error:
            get_strategy(name)
        assert str(error.value) == (
            f"distribution {name!r} needs keras.distribution.ModelParallel, which the jax "
            "backend has, not tensorflow; set KERAS_BACKEND=jax")
    with pytest.raises(ValueError, match="train.mesh applies to the distributions fsdp"):
        get_strategy("data_parallel", mesh={"batch": 1, "model": 1})


def test_the_planner_says_gpt2_124m_fits_the_eighth_under_fsdp():
    # The target shape, counted (the child checks the count against real shards).
    for preset in ("gpt2_124m", "llama_124m"):
        full = planner.plan(preset, layout="data_parallel", batch_size=8)
        fsdp = planner.plan(preset, mesh={"batch": 1, "model": 8}, layout="fsdp", batch_size=8)
        held = fsdp.per_device["weights"] + fsdp.per_device["optimizer"]
        assert held <= (full.per_device["weights"] + full.per_device["optimizer"]) / 8 * 1.05


# ------------------------------------------------------------------------ JAX, 8 devices
def _train(preset, layout, mesh, initial):
    """20 steps of `preset` (from `initial` weights, or its seed-0 ones), one device when
    `layout` is None; returns (losses, model, strategy, its initial weights).

    The rows are arithmetic progressions modulo `USED` (a random start and step each) of a
    larger vocabulary, so the loss falls within 20 steps: the comparison is of a model that
    learns, whose gradients are not noise that Adam's normalization would amplify.
    """
    import keras

    from kzoo.models import CausalLM
    from kzoo.training.distribute import get_strategy, lay_out, run_scope

    strategy = get_strategy(layout or "none", mesh=mesh)
    lay_out(strategy, preset, vocab_size=VOCAB, max_sequence_length=SEQ)
    rng = np.random.RandomState(0)
    start, step = rng.randint(0, USED, (2, STEPS, BATCH, 1))
    tokens = (start + step * np.arange(SEQ + 1)) % USED  # (steps, batch, seq + 1)
    with run_scope(strategy):
        seed_without_tensorflow(0)
        model = CausalLM.from_preset(preset, vocab_size=VOCAB, max_sequence_length=SEQ)
        model.build((None, SEQ))
        if initial is not None:
            model.set_weights(initial)
        initial = model.get_weights()
        model.compile(optimizer=keras.optimizers.AdamW(LEARNING_RATE))
        model.optimizer.build(model.trainable_variables)
        losses = []
        for batch in tokens:
            model.reset_metrics()
            logs = model.train_on_batch(batch[:, :-1], batch[:, 1:], return_dict=True)
            losses.append(float(logs["loss"]))
    return losses, model, strategy, initial


def _spec(variable):
    spec = tuple(variable.value.sharding.spec)
    return spec + (None,) * (len(variable.shape) - len(spec))


def _bytes_per_device(arrays):
    held = {}
    for array in arrays:
        for shard in array.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return max(held.values())


def _relative(path):
    return path.split("/", 1)[1]  # without the model's name


def child(out_path):
    import jax

    from kzoo.models.lora import enable_lora
    from kzoo.training.distribute import run_scope

    out = {"devices": len(jax.devices()), "runs": {}}
    for preset in MODELS:
        reference, model, _, initial = _train(preset, None, None, None)
        out["runs"][f"{preset}/single"] = {"losses": reference, "bytes": _bytes_per_device(
            [v.value for v in model.trainable_variables + _slots(model)])}
        for layout, mesh_name in CASES:
            mesh = MESHES[mesh_name]
            losses, model, strategy, _ = _train(preset, layout, mesh, initial)
            if (preset, layout, mesh_name) == ("llama_nano", "tensor_parallel", "2x4"):
                lora = model, strategy  # for the adapters below
            expected = variable_axes(layout, preset, mesh["model"], vocab_size=VOCAB,
                                     max_sequence_length=SEQ)
            slots = _slots(model)
            out["runs"][f"{preset}/{layout}/{mesh_name}"] = {
                "losses": losses,
                "specs": {_relative(v.path): _spec(v) for v in model.trainable_variables},
                "expected": expected,
                "slot_mismatches": [
                    s.path for v in model.trainable_variables for s in slots
                    if s.path.startswith(f"adam_w/{v.path.replace('/', '_')}_")
                    and not s.value.sharding.is_equivalent_to(v.value.sharding,
                                                              len(v.shape))],
                "slots": len(slots),
                "bytes": _bytes_per_device(
                    [v.value for v in model.trainable_variables + slots]),
            }
    # LoRA adapters made under a sharded scope stay replicated; their base kernels keep theirs.
    model, strategy = lora
    with run_scope(strategy):
        enable_lora(model, rank=2)
    out["lora"] = {_relative(v.path): [_spec(v), v.value.sharding.is_fully_replicated]
                   for v in model.variables if "lora" in v.path or v.path.endswith("up/kernel")}
    with open(out_path, "w") as f:
        json.dump(out, f)


def _slots(model):
    # AdamW's momentum and velocity: the optimizer variables shaped like a weight.
    return [v for v in model.optimizer.variables if len(v.shape) > 0]


@pytest.fixture(scope="module")
def jax_runs(tmp_path_factory):
    if not installed(("jax",)):
        pytest.skip("jax is not installed")
    out = tmp_path_factory.mktemp("sharding") / "out.json"
    kids = run_backend_children(["-m", "tests.training.test_sharding", "child", str(out)],
                                backends=("jax",),
                                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    kids["jax"].check()
    return json.loads(out.read_text())


def _sharded_runs(runs):
    return [(name, run) for name, run in runs["runs"].items() if not name.endswith("single")]


def test_sharded_runs_equal_the_single_device_run(jax_runs):
    assert jax_runs["devices"] == 8
    names = [name for name, _ in _sharded_runs(jax_runs)]
    assert len(names) == len(MODELS) * len(CASES)
    for name, run in _sharded_runs(jax_runs):
        reference = jax_runs["runs"][name.split("/")[0] + "/single"]["losses"]
        assert len(run["losses"]) == STEPS
        assert reference[-1] < reference[0] - 0.5  # it learns: the comparison means something
        np.testing.assert_allclose(run["losses"], reference, rtol=1e-5, err_msg=name)


def test_every_weight_has_its_layout_and_every_adamw_slot_its_weights(jax_runs):
    for name, run in _sharded_runs(jax_runs):
        assert run["specs"].keys() == run["expected"].keys(), name
        for path, spec in run["specs"].items():
            assert tuple(spec) == tuple(run["expected"][path]), (name, path)
        assert run["slots"] == 2 * len(run["specs"])
        assert run["slot_mismatches"] == [], name
    assert any("model" in spec for name, run in _sharded_runs(jax_runs)
               for spec in run["specs"].values())


def test_lora_adapters_are_replicated(jax_runs):
    lora = jax_runs["lora"]
    adapters = [path for path in lora if "lora" in path]
    assert len(adapters) >= 4
    assert all(lora[path][1] for path in adapters)
    assert lora["block_0/feedforward/up/kernel"][0] == [None, "model"]


@pytest.mark.parametrize("preset", MODELS)
def test_bytes_per_device_are_the_planners(jax_runs, preset):
    single = jax_runs["runs"][f"{preset}/single"]["bytes"]
    for layout, mesh_name in CASES:
        mesh = MESHES[mesh_name]
        run = jax_runs["runs"][f"{preset}/{layout}/{mesh_name}"]
        counted = planner.plan(preset, mesh=mesh, layout=layout, batch_size=BATCH,
                               vocab_size=VOCAB, max_sequence_length=SEQ).per_device
        assert run["bytes"] == counted["weights"] + counted["optimizer"], (layout, mesh)
    fsdp = jax_runs["runs"][f"{preset}/fsdp/1x8"]["bytes"]
    assert fsdp < single / 8 * 1.25  # norms and biases stay whole: see the 124m figures
    if preset == "llama_nano":  # few replicated weights: the bound holds already
        assert fsdp <= single / 8 * 1.05


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(sys.argv[2])
