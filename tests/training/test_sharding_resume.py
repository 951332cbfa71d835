"""A sharded pre-training run resumes on another mesh (issue 24 item 5), on JAX.

One child with 4 CPU devices (`train.logical_cpus=4`) trains the tiny demo config for 4 steps
under fsdp on a 1x4 mesh, checkpointing at steps 2 and 4: each checkpoint is written shard by
shard with Orbax (`weights/`, no `.weights.h5`), its manifest lists every file in the folder.
Copies of its folder, taken back to the step-2 checkpoint, resume on one device (distribution
none) in that child, and on a 1x2 fsdp mesh in a second child that has 2 devices: both
continue with the uninterrupted run's step-4 loss and validation loss, the new sharding
recorded in `resumes.jsonl`. The one-device copy is taken back by damaging one Orbax shard
file of step 4: the restore falls back to step 2 with a warning naming that file. That
one-device resume writes its step-4 checkpoint as `.weights.h5` (its state is whole); the
second child loads it into the 1x2 sharded model (a sharded run resumes from an `.h5`
checkpoint) and gets the one-device model's weights. A changed model is refused with the
folder untouched. The sharded run's `model.keras` and a `save_hf` folder written from the
sharded model in memory load on one device with the sharded model's logits.
"""

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, installed, run_backend_children

DEMO = ROOT / "recipes/configs/gpt/nano_pydocs_pretrain.yaml"
SETTINGS = [
    "tokenizer.kind=char", "tokenizer.vocab_size=null", "model.args={max_sequence_length: 32}",
    "train.block_size=16", "train.batch_size=8", "train.steps=4", "train.eval_interval=2",
    "train.val_batches=1", "train.warmup_steps=1", "train.verbose=0", "train.keep_backups=2",
    "train.tensorboard=false", "sample.max_new_tokens=0", "sample.every_interval=false",
]
FOUR = ["train.distribution=fsdp", "train.mesh={batch: 1, model: 4}", "train.logical_cpus=4"]
ONE = ["train.distribution=none", "train.mesh=null", "train.logical_cpus=0"]
TWO = ["train.distribution=fsdp", "train.mesh={batch: 1, model: 2}", "train.logical_cpus=2"]


def _rows(run_dir):
    return [{k: float(v) for k, v in row.items() if k in ("step", "loss", "val_loss")}
            for row in csv.DictReader((Path(run_dir) / "metrics.csv").open())]


def _back_to_step_2(run, copy):
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "backup/step-0000004")
    (copy / "backup/LATEST").write_text("step-0000002")


def _damage_a_shard(run, copy) -> str:
    """Copy `run` with one Orbax shard file of its step-4 checkpoint's bytes flipped; return
    that file's path."""
    shutil.copytree(run, copy)
    shard = sorted((copy / "backup/step-0000004/weights").glob("ocdbt.process_0/d/*"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return str(shard)


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _snapshot(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file()}


def _split(model) -> list:
    """The weights `model` holds split along the mesh's model axis."""
    return sorted(v.path.split("/", 1)[1] for v in model.weights
                  if "model" in tuple(getattr(v.value.sharding, "spec", ())))


def _recorder():
    """Patch the recipe's build_model to keep the models it builds (to read their shardings)."""
    import importlib

    recipe = importlib.import_module("kzoo.training.pretrain")  # the module, not the function
    built, build_model = [], recipe.build_model
    recipe.build_model = lambda *args: built.append(build_model(*args)) or built[-1]
    return built


def _resume(run, extra, out):
    import contextlib
    import io

    from kzoo.training import PretrainConfig, load_config, pretrain
    from kzoo.training.checkpoints import list_checkpoints, verify_checkpoint

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        result = pretrain(load_config(DEMO, PretrainConfig,
                                      [*SETTINGS, *extra, f"run_dir={run}"]))
    out["warnings"] = [ln for ln in stderr.getvalue().splitlines() if ln.startswith("warning:")]
    out["resumed_from"] = result["resumed_from"]
    out["rows"] = _rows(run)
    out["resumes"] = [json.loads(line) for line in (run / "resumes.jsonl").open()]
    out["checkpoints"] = [[c.name, verify_checkpoint(c)] for c in list_checkpoints(run / "backup")]


def child_four(workdir):
    """The 4-device run, the one-device resume, the refusal and the gathered model files."""
    import jax
    import keras

    import kzoo  # noqa: F401  (registers the kzoo classes for load_model)
    from kzoo.interop.hf import load_hf, save_hf
    from kzoo.training import PretrainConfig, load_config, pretrain
    from kzoo.training.checkpoints import MANIFEST, list_checkpoints, read_state, verify_checkpoint

    built = _recorder()
    workdir = Path(workdir)
    whole = workdir / "whole"
    out = {"devices": len(jax.devices()), "whole": {}, "one": {}}
    pretrain(load_config(DEMO, PretrainConfig, [*SETTINGS, *FOUR, f"run_dir={whole}"]))
    sharded = built[-1]
    out["whole"]["rows"] = _rows(whole)
    out["whole"]["split"] = _split(sharded)
    out["whole"]["checkpoints"] = [
        [c.name, verify_checkpoint(c), sorted(json.loads((c / MANIFEST).read_text())["files"]),
         read_state(c)["step"], read_state(c)["sharding"], _files(c)]
        for c in list_checkpoints(whole / "backup")]
    for name in ("two", "changed_model"):
        _back_to_step_2(whole, workdir / name)
    out["one"]["damaged"] = _damage_a_shard(whole, workdir / "one")

    # The gathered model: model.keras and a save_hf folder from the sharded model, each loaded
    # outside any distribution (one device) against the sharded model's logits.
    # predict: one compiled program (an eager call on sharded weights compiles every op)
    x = (np.arange(32).reshape(2, 16) * 7) % 20
    logits = sharded.predict(x, verbose=0)
    save_hf(sharded, workdir / "hf")
    files = {}
    for name, load in (("model.keras", lambda: keras.saving.load_model(whole / "model.keras")),
                       ("save_hf", lambda: load_hf(workdir / "hf"))):
        model = load()
        devices = {len(v.value.sharding.device_set) for v in model.weights}
        got = model.predict(x, verbose=0)
        files[name] = [sorted(devices), float(np.max(np.abs(got - logits))),
                       float(np.max(np.abs(logits)))]
    out["files"] = files

    _resume(workdir / "one", ONE, out["one"])
    # its step 4, written from whole state on one device: a .weights.h5 checkpoint
    step_4 = workdir / "one/backup/step-0000004"
    out["one"]["step_4_files"] = sorted(json.loads((step_4 / MANIFEST).read_text())["files"])
    shutil.copytree(workdir / "one", workdir / "h5")  # resumed by the 1x2 child
    run = workdir / "changed_model"
    before = _snapshot(run)
    try:
        pretrain(load_config(DEMO, PretrainConfig, [
            *SETTINGS, *ONE, "model.args={max_sequence_length: 64}", f"run_dir={run}"]))
        out["changed_model"] = None
    except ValueError as error:
        out["changed_model"] = [str(error), _snapshot(run) == before]
    print("RESUME " + json.dumps(out))


def child_two(workdir):
    """The resume on a 1x2 fsdp mesh, in a process with 2 devices; then the one-device
    resume's `.h5` step 4 loaded into the 1x2 sharded model (complete: nothing trains)."""
    import jax
    import keras

    import kzoo  # noqa: F401  (registers the kzoo classes for load_model)

    built = _recorder()
    workdir = Path(workdir)
    out = {"devices": len(jax.devices())}
    _resume(workdir / "two", TWO, out)
    out["split"] = _split(built[-1])
    out["h5"] = {}
    _resume(workdir / "h5", TWO, out["h5"])
    sharded = built[-1]
    whole = keras.saving.load_model(workdir / "one/model.keras")  # the one-device run's end
    out["h5"]["split"] = _split(sharded)
    out["h5"]["iterations"] = int(sharded.optimizer.iterations.numpy())
    out["h5"]["max_diff"] = max(float(np.max(np.abs(np.asarray(a.value) - b.numpy())))
                                for a, b in zip(sharded.weights, whole.weights, strict=True))
    print("RESUME " + json.dumps(out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not installed(("jax",)):
        pytest.skip("jax is not installed")
    work = tmp_path_factory.mktemp("sharded_resume")
    out = {}
    for name, devices in (("four", 4), ("two", 2)):  # the second resumes the first's copy
        # the devices split before JAX starts (importing kzoo starts it): as train.logical_cpus
        kids = run_backend_children(
            ["-m", "tests.training.test_sharding_resume", name, str(work)], backends=("jax",),
            env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
        out[name] = kids["jax"].json("RESUME ")
    return out


def test_the_sharding_is_noted_and_a_change_named_for_the_resume_record():
    import keras

    from kzoo.backend import KerasStrategy
    from kzoo.training.resume import note_sharding

    # a (1, 2) mesh named on TensorFlow's one CPU twice: only its shape is read
    mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"),
                                         keras.distribution.list_devices()[:1] * 2)
    fsdp = KerasStrategy(None, 1, "fsdp", keras.distribution.LayoutMap(mesh))
    state, changed = {}, {}
    note_sharding(state, fsdp, changed)  # a new run or an older checkpoint: nothing to compare
    assert state == {"sharding": {"layout": "fsdp", "mesh": {"batch": 1, "model": 2}}}
    assert changed == {}
    note_sharding(state, fsdp, changed)  # the same sharding again
    assert changed == {}
    note_sharding(state, KerasStrategy(None, 2), changed)
    assert changed == {"sharding": [{"layout": "fsdp", "mesh": {"batch": 1, "model": 2}},
                                    {"layout": None, "replicas": 2}]}
    fresh = {}
    note_sharding(fresh, fsdp, None)  # not resuming: only noted
    assert fresh["sharding"]["layout"] == "fsdp"


def _continues_the_whole_run(got, whole):
    assert got["resumed_from"] == 2
    assert [r["step"] for r in got["rows"]] == [2, 4]  # the step-2 row kept, step 4 redone
    assert got["rows"][0] == whole[0]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(got["rows"][1][key], whole[1][key], rtol=1e-5, err_msg=key)
    assert [name for name, problem in got["checkpoints"]] == ["step-0000004", "step-0000002"]
    assert all(problem is None for _, problem in got["checkpoints"])


def test_the_run_was_sharded_and_its_checkpoints_are_intact(runs):
    four = runs["four"]
    assert four["devices"] == 4 and runs["two"]["devices"] == 2
    assert {"token_embedding/embeddings", "block_0/attention/query_key_value/kernel"} <= set(
        four["whole"]["split"])
    fsdp = {"layout": "fsdp", "mesh": {"batch": 1, "model": 4}}
    checkpoints = four["whole"]["checkpoints"]
    assert [c[:2] + c[3:5] for c in checkpoints] == [
        [f"step-000000{step}", None, step, fsdp] for step in (4, 2)]
    for _, _, listed, _, _, present in checkpoints:
        # written shard by shard with Orbax, and the manifest names every other file
        assert "ckpt.weights.h5" not in present
        assert listed == [f for f in present if f != "manifest.json"]
        assert "state.json" in listed and "weights/_METADATA" in listed
        assert any(f.startswith("weights/ocdbt.process_0/d/") for f in listed)
    assert [r["step"] for r in four["whole"]["rows"]] == [2, 4]


def test_resume_on_one_device_continues_the_sharded_run(runs):
    one = runs["four"]["one"]
    _continues_the_whole_run(one, runs["four"]["whole"]["rows"])
    # the damaged shard of step 4 was named, and step 2 (intact) used
    damaged, fallback = one["warnings"]
    assert damaged.startswith("warning: checkpoint step-0000004 is damaged: ")
    assert f"{one['damaged']} does not match its sha256" in damaged
    assert fallback.endswith("step-0000002, the newest intact checkpoint")
    # its own step 4, of whole state, is a .weights.h5 checkpoint
    assert one["step_4_files"] == ["ckpt.weights.h5", "state.json"]
    (record,) = one["resumes"]
    assert record["from_step"] == 2 and record["override"] is False
    assert record["changed"]["train.distribution"] == ["fsdp", "none"]
    assert record["changed"]["train.mesh"] == [{"batch": 1, "model": 4}, None]  # one key
    assert record["changed"]["sharding"] == [{"layout": "fsdp", "mesh": {"batch": 1, "model": 4}},
                                             {"layout": None, "replicas": 1}]


def test_resume_on_two_devices_reshards_and_continues(runs):
    two = runs["two"]
    _continues_the_whole_run(two, runs["four"]["whole"]["rows"])
    assert two["split"] == runs["four"]["whole"]["split"]  # laid out again, on 2 devices
    (record,) = two["resumes"]
    assert record["changed"]["train.mesh"] == [{"batch": 1, "model": 4}, {"batch": 1, "model": 2}]
    assert record["changed"]["sharding"][1] == {"layout": "fsdp", "mesh": {"batch": 1, "model": 2}}
    assert "train.distribution" not in record["changed"] and not record["override"]


def test_a_sharded_run_resumes_from_an_h5_checkpoint(runs):
    h5 = runs["two"]["h5"]
    assert h5["resumed_from"] == 4 and h5["warnings"] == []
    assert h5["split"] == runs["four"]["whole"]["split"]  # laid out on the 1x2 mesh
    assert h5["iterations"] == 4 and h5["max_diff"] == 0.0  # the file's weights, exactly


def test_a_changed_model_is_refused_whatever_the_mesh(runs):
    message, untouched = runs["four"]["changed_model"]
    assert "holds a checkpoint of a different run (changed: model)" in message
    assert "\n" not in message and untouched


@pytest.mark.parametrize("name", ["model.keras", "save_hf"])
def test_the_sharded_run_writes_the_gathered_model(runs, name):
    devices, max_diff, scale = runs["four"]["files"][name]
    assert devices == [1]  # every weight whole, on one device
    assert scale > 0.1 and max_diff <= 1e-5 * scale


if __name__ == "__main__" and sys.argv[1:2] in (["four"], ["two"]):
    {"four": child_four, "two": child_two}[sys.argv[1]](sys.argv[2])
