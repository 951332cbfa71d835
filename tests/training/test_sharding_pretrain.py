"""The pre-training recipe under `train.distribution: fsdp | tensor_parallel` with
`train.mesh` on JAX: one child process splits its CPU into 4 devices (`train.logical_cpus`),
runs the tiny demo config sharded on a 2x2 and a 1x4 mesh and on one device, starts a
tensor-parallel run from the fsdp run's saved model (`model.init_from`), and tries the bad
inputs (a mesh of the wrong size, a malformed mesh) through `pretrain` itself. The 1x4 run
alone samples at the end."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, installed, run_backend_children

DEMO = ROOT / "recipes/configs/gpt/nano_pydocs_pretrain.yaml"
SETTINGS = [
    "tokenizer.kind=char", "tokenizer.vocab_size=null", "model.args={max_sequence_length: 32}",
    "train.block_size=16", "train.batch_size=8", "train.steps=4", "train.eval_interval=2",
    "train.val_batches=2", "train.warmup_steps=1", "train.verbose=0",
    "train.tensorboard=false", "sample.max_new_tokens=0", "sample.every_interval=false",
    "train.logical_cpus=4",
]
# One run samples at the end (4 tokens from the sharded model): a generator compiles for
# seconds, and the samples are not compared (generation under fsdp is compared with one
# device in test_sharding_features.py; the chief's sample over 2 processes is in
# test_sharding_processes.py).
RUNS = {"fsdp_2x2": ["train.distribution=fsdp", "train.mesh={batch: 2, model: 2}"],
        "tp_1x4": ["train.distribution=tensor_parallel", "train.mesh={batch: 1, model: 4}",
                   "sample.max_new_tokens=4"],
        "single": ["train.logical_cpus=0"],  # after the others: the CPU is split by then
        # the gathered model.keras of the fsdp run, laid out again from its config.json
        "tp_from_fsdp": ["train.distribution=tensor_parallel", "train.mesh={batch: 2, model: 2}",
                         "model.init_from=RUNS/fsdp_2x2/model.keras"]}
BAD = {"wrong_size": ["train.distribution=fsdp", "train.mesh={batch: 2, model: 4}"],
       "malformed": ["train.distribution=fsdp", "train.mesh={batch: 2}"],
       "mesh_without_sharding": ["train.distribution=data_parallel",
                                 "train.mesh={batch: 2, model: 2}"]}


def _rows(run_dir):
    return [{k: float(v) for k, v in row.items() if k in ("loss", "val_loss")}
            for row in csv.DictReader((Path(run_dir) / "metrics.csv").open())]


def child(workdir):
    import importlib

    import jax

    from kzoo.training import PretrainConfig, load_config, pretrain

    recipe = importlib.import_module("kzoo.training.pretrain")  # the module, not the function

    built = []  # the models the recipe builds, to read their weights' shardings
    build_model = recipe.build_model
    recipe.build_model = lambda *args: built.append(build_model(*args)) or built[-1]
    workdir = Path(workdir)
    out = {"runs": {}, "bad": {}, "sharded": {}, "samples": {}}
    for name, extra in RUNS.items():
        run = workdir / name
        extra = [item.replace("RUNS", str(workdir)) for item in extra]
        result = pretrain(load_config(DEMO, PretrainConfig,
                                      [*SETTINGS, *extra, f"run_dir={run}"]))
        out["samples"][name] = result["sample"]
        out["runs"][name] = _rows(run)
        out["sharded"][name] = sorted(
            v.path.split("/", 1)[1] for v in built[-1].trainable_variables
            if "model" in tuple(getattr(v.value.sharding, "spec", ())))
    out["devices"] = len(jax.devices())
    for name, extra in BAD.items():
        run = workdir / name
        try:
            pretrain(load_config(DEMO, PretrainConfig, [*SETTINGS, *extra, f"run_dir={run}"]))
            out["bad"][name] = None
        except ValueError as error:
            out["bad"][name] = [str(error), run.exists()]
    print("SHARDED " + json.dumps(out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not installed(("jax",)):
        pytest.skip("jax is not installed")
    work = tmp_path_factory.mktemp("sharded_pretrain")
    kids = run_backend_children(["-m", "tests.training.test_sharding_pretrain", "child",
                                 str(work)], backends=("jax",))
    return kids["jax"].json("SHARDED ")


@pytest.mark.parametrize("name", ["fsdp_2x2", "tp_1x4"])
def test_sharded_pretraining_equals_one_device(runs, name):
    assert runs["devices"] == 4
    got, ref = runs["runs"][name], runs["runs"]["single"]
    assert len(got) == len(ref) == 2
    sharded = runs["sharded"][name]
    assert "block_0/attention/query_key_value/kernel" in sharded
    if name == "fsdp_2x2":  # every kernel and embedding
        assert {"token_embedding/embeddings", "position_embedding/embeddings"} <= set(sharded)
    assert runs["sharded"]["single"] == []
    assert "block_1/feedforward/down/kernel" in runs["sharded"]["tp_from_fsdp"]
    # it starts where the fsdp run ended: below that run's first loss
    assert runs["runs"]["tp_from_fsdp"][0]["loss"] < runs["runs"]["fsdp_2x2"][0]["loss"]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in ref], rtol=1e-5,
                                   err_msg=key)


def test_the_sharded_model_samples_at_the_end(runs):
    prompt = 'The "for" statement'  # the demo config's
    samples = runs["samples"]
    assert samples["tp_1x4"].startswith(prompt) and len(samples["tp_1x4"]) > len(prompt)
    assert all(samples[name] == prompt for name in RUNS if name != "tp_1x4")  # no tokens asked


def test_bad_meshes_are_one_line_and_leave_no_folder(runs):
    bad = runs["bad"]
    assert bad["wrong_size"] == ["mesh {batch: 2, model: 4} holds 8 devices but 4 are "
                                 "available; make batch x model equal the device count", False]
    assert bad["malformed"][0].startswith("train.mesh") and not bad["malformed"][1]
    assert bad["mesh_without_sharding"] == [
        "train.mesh applies to the distributions fsdp, tensor_parallel; got distribution "
        "'data_parallel'", False]
    assert all("\n" not in message for message, _ in bad.values())


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(sys.argv[2])
