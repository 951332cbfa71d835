"""The pre-training recipe over two processes (JAX's distributed runtime, Gloo collectives on
the CPU), each with 2 virtual devices: one 4-device mesh over both.

All children start at once (one test, one round of process starts):
- `p0`, `p1`: processes 0 and 1 of a run (KERAS_DISTRIBUTION_* variables, a port free on
  127.0.0.1), each running the tiny demo config under fsdp on a {batch: 2, model: 2} mesh and
  tensor_parallel on {batch: 1, model: 4}, then a mesh of the wrong size. Both are given the
  same run_dir (a shared folder, as on a cluster): process 0 alone writes the run's files,
  and each process writes its own shards of every checkpoint (Orbax, `ocdbt.process_<i>/`),
  which nobody gathers; process 0's manifest lists them all.
- `single`: one process, 4 devices, the 2x2 run, then a one-device run (the reference).
- `lonely`: `kzoo pretrain` as process 1 with nobody at the coordinator's port, and
- `orphan`: `kzoo pretrain` as process 0 whose peer never comes: both fail at the 3 s
  timeout with one `error:` line naming the address and exit code 2.

Then one more child, `resume`: a copy of the tensor_parallel run taken back to its step-5
checkpoint (written by both processes) resumes in ONE process on one device and continues
with the two processes' step-10 loss and validation loss.

Each process must read only its slice of every batch: process 0's first rows and process 1's
make the single process's batch on the 2x2 mesh (the batch axis runs across the processes),
and both read the whole batch on 1x4 (every process holds part of every row's model).

Run a process by hand: `KERAS_BACKEND=jax KERAS_DISTRIBUTION_JOB_ADDRESSES=127.0.0.1:PORT
KERAS_DISTRIBUTION_NUM_PROCESSES=2 KERAS_DISTRIBUTION_PROCESS_ID=0 python -m
tests.training.test_sharding_processes process WORKDIR` (and the same with ID=1).
"""

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, installed, run_backend_children, start_backend_children
from tests.training.test_sharding_pretrain import DEMO, _rows

SETTINGS = [
    "tokenizer.kind=char", "tokenizer.vocab_size=null", "model.args={max_sequence_length: 32}",
    "train.block_size=16", "train.batch_size=8", "train.steps=10", "train.eval_interval=5",
    "train.val_batches=2", "train.warmup_steps=1", "train.verbose=0",
    "train.tensorboard=false", "sample.max_new_tokens=0", "sample.every_interval=false",
    "train.logical_cpus=LOCAL",
]
# The chief samples at the end (4 tokens on its own devices, from the weights gathered to it) in
# the first run only: a generator compiles for seconds.
RUNS = {"fsdp_2x2": ["train.distribution=fsdp", "train.mesh={batch: 2, model: 2}",
                     "sample.max_new_tokens=4"],
        "tp_1x4": ["train.distribution=tensor_parallel", "train.mesh={batch: 1, model: 4}"]}
WRONG = ["train.distribution=fsdp", "train.mesh={batch: 2, model: 4}"]
TIMEOUT_S = 3  # the coordinator timeout of the children that must fail


def _free_ports(count: int) -> list:
    """`count` distinct ports free on 127.0.0.1 now (held together while chosen)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _pretrain(settings, run_dir):
    import importlib

    from kzoo.training import PretrainConfig, load_config

    recipe = importlib.import_module("kzoo.training.pretrain")
    return recipe.pretrain(load_config(DEMO, PretrainConfig, [*settings, f"run_dir={run_dir}"]))


def child(mode, workdir):
    """`process` (one of the two) or `single`: the runs, their first batches and losses."""
    import importlib

    import jax

    from kzoo.training.distribute import is_chief

    recipe = importlib.import_module("kzoo.training.pretrain")
    first = []  # the first batch each run's training pipeline gives this process
    training = recipe._training

    def record(*args):
        dataset = training(*args)
        first.append(next(iter(dataset))[0].numpy().tolist())
        return dataset

    recipe._training = record
    local = 2 if mode == "process" else 4
    settings = [s.replace("LOCAL", str(local)) for s in SETTINGS]
    # the single process: the 2x2 run on its 4 devices, then one device (1x4 is compared with
    # one device only: tests/training/test_sharding_pretrain.py has 1x4 = one device); it does
    # not sample (a generator compile; only the two processes' chief is checked for it)
    runs = dict(RUNS) if mode == "process" else {
        "fsdp_2x2": [*RUNS["fsdp_2x2"], "sample.max_new_tokens=0"],
        "one_device": ["train.distribution=none", "train.logical_cpus=0"]}
    workdir = Path(workdir)
    out = {"runs": {}, "first": {}, "result": {}, "chief": is_chief()}
    for name, extra in runs.items():
        run = workdir / ("runs" if mode == "process" else mode) / name  # shared by p0 and p1
        result = _pretrain([*settings, *extra], run)
        out["result"][name] = {k: result[k] for k in ("loss", "val_loss")}
        out["first"][name] = first[-1]
        out["runs"][name] = _rows(run) if is_chief() else None
    out["devices"] = [jax.device_count(), jax.local_device_count(), jax.process_count()]
    if mode == "process":
        try:
            _pretrain([*settings, *WRONG], workdir / "wrong")
            out["wrong"] = None
        except ValueError as error:
            out["wrong"] = [str(error), (workdir / "wrong").exists()]
    print("PROCESSES " + json.dumps(out), flush=True)


def resume(workdir):
    """The tensor_parallel run of both processes, back to step 5, resumed on one device."""
    import shutil

    import jax

    from kzoo.training.checkpoints import verify_checkpoint

    workdir = Path(workdir)
    run = workdir / "resumed"
    shutil.copytree(workdir / "runs/tp_1x4", run)
    shutil.rmtree(run / "backup/step-0000010")
    (run / "backup/LATEST").write_text("step-0000005")
    settings = [s.replace("LOCAL", "0") for s in SETTINGS]
    result = _pretrain([*settings, "train.distribution=none"], run)
    out = {"devices": jax.device_count(), "resumed_from": result["resumed_from"],
           "rows": _rows(run),
           "intact": [verify_checkpoint(run / "backup" / f"step-{s:07d}") for s in (5, 10)]}
    print("PROCESSES " + json.dumps(out), flush=True)


def _manifest_files(folder):
    return sorted(json.loads((folder / "manifest.json").read_text())["files"])


@pytest.fixture(scope="module")
def kids(tmp_path_factory):
    if not installed(("jax",)):
        pytest.skip("jax is not installed")
    work = tmp_path_factory.mktemp("processes")
    # p0 and p1 meet at `port`; lonely and orphan at ports of their own, or they would meet
    ports = dict(zip(("p0", "lonely", "orphan"), _free_ports(3)), p1=None)
    ports["p1"] = ports["p0"]
    recipe = ["-m", "kzoo.cli", "pretrain", "--config", str(DEMO),
              *[f"--set={s.replace('LOCAL', '2')}" for s in SETTINGS],
              "--set=train.distribution=fsdp"]
    args = {"p0": ["-m", "tests.training.test_sharding_processes", "process", work],
            "p1": ["-m", "tests.training.test_sharding_processes", "process", work],
            "single": ["-m", "tests.training.test_sharding_processes", "single", work],
            "lonely": [*recipe, f"--set=run_dir={work / 'lonely'}"],
            "orphan": [*recipe, f"--set=run_dir={work / 'orphan'}"]}

    def env(label):
        if label == "single":
            return {}
        index = {"p0": 0, "p1": 1, "lonely": 1, "orphan": 0}[label]
        timeout = 120 if label in ("p0", "p1") else TIMEOUT_S
        return {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{ports[label]}",
                "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
                "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
                "KZOO_COORDINATOR_TIMEOUT": str(timeout)}

    with start_backend_children(lambda label: args[label], dict.fromkeys(args, "jax"),
                                env=env, cwd=ROOT) as started:
        done = started.wait()
    out = {label: done[label].json("PROCESSES ") for label in ("p0", "p1", "single")}
    # after both processes: their checkpoint resumed in one process on one device
    out["resume"] = run_backend_children(
        ["-m", "tests.training.test_sharding_processes", "resume", str(work)],
        backends=("jax",))["jax"].json("PROCESSES ")
    return {"work": work, "ports": ports, "done": done, **out}


def test_two_processes_train_as_one(kids):
    p0, p1, single, work = kids["p0"], kids["p1"], kids["single"], kids["work"]
    assert p0["devices"] == p1["devices"] == [4, 2, 2] and single["devices"] == [4, 4, 1]
    assert p0["chief"] and not p1["chief"]
    one = single["runs"]["one_device"]
    for name in RUNS:
        got = p0["runs"][name]
        references = [one, *([single["runs"][name]] if name in single["runs"] else [])]
        for key in ("loss", "val_loss"):
            for other in references:  # one device, and the 4-device process
                assert len(got) == len(other) == 2, name
                np.testing.assert_allclose([r[key] for r in got], [r[key] for r in other],
                                           rtol=1e-5, err_msg=f"{name} {key}")
        # process 1 computed the same figures (it logs nothing itself)
        assert p1["result"][name] == p0["result"][name]
    # the data: process 0 feeds the first half of every batch on 2x2, process 1 the second;
    # on 1x4 the batch axis is one row of the mesh and both feed the whole batch
    whole = single["first"]["fsdp_2x2"]
    assert single["first"]["one_device"] == whole and len(whole) == 8
    assert p0["first"]["fsdp_2x2"] == whole[:4] and p1["first"]["fsdp_2x2"] == whole[4:]
    assert p0["first"]["tp_1x4"] == p1["first"]["tp_1x4"] == whole
    # the chief wrote the run's files; each checkpoint holds both processes' own shards
    # (Orbax names a process's files by its index), listed in the chief's manifest
    for name in RUNS:
        folder = work / "runs" / name
        assert {"model.keras", "best.keras", "metrics.csv", "config.yaml"} <= {
            p.name for p in folder.iterdir()}, name
        for step in (5, 10):
            files = _manifest_files(folder / "backup" / f"step-{step:07d}")
            for index in (0, 1):
                assert f"weights/array_metadatas/process_{index}" in files, (name, step)
                assert any(f.startswith(f"weights/ocdbt.process_{index}/d/") for f in files)
            assert "ckpt.weights.h5" not in files and "state.json" in files
    # the chief sampled from the weights gathered to it, alone; process 1 did not
    assert "=== sample from" in kids["done"]["p0"].stdout
    assert "=== sample from" not in kids["done"]["p1"].stdout
    # a mesh of the wrong size names the count over all processes; nothing written
    for kid in (p0, p1):
        assert kid["wrong"] == ["mesh {batch: 2, model: 4} holds 8 devices but 4 are available "
                                "over 2 processes (2 in this one); make batch x model equal "
                                "the device count of all processes", False]
    # no coordinator (process 1), no peer (process 0): one line naming the address, exit 2
    for label, text in (("lonely", "cannot reach the coordinator {} within 3 s"),
                        ("orphan", "not every process reached the coordinator {} within 3 s")):
        kid, text = kids["done"][label], text.format(f"127.0.0.1:{kids['ports'][label]}")
        errors = [line for line in kid.stderr.splitlines() if line.startswith("error:")]
        assert kid.returncode == 2, (label, kid.stderr[-2000:])
        assert len(errors) == 1 and text in errors[0], (label, kid.stderr[-2000:])
        assert "Traceback" not in kid.stderr and not (work / label).exists()


def test_a_checkpoint_of_two_processes_resumes_in_one_process_on_one_device(kids):
    got, whole = kids["resume"], kids["p0"]["runs"]["tp_1x4"]
    assert got["devices"] == 1 and got["resumed_from"] == 5
    assert len(got["rows"]) == 2 and got["rows"][0] == whole[0]  # step 5 kept, 10 redone
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(got["rows"][1][key], whole[1][key], rtol=1e-5, err_msg=key)
    assert got["intact"] == [None, None]


def test_process_settings_are_read_from_the_environment_or_refused_in_one_line(monkeypatch):
    from kzoo.training.distribute import (
        ProcessSlice,
        ProcessSpec,
        get_strategy,
        host_callbacks,
        is_chief,
        process_spec,
    )

    two = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:1234",
           "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "1"}
    assert process_spec({}) is None
    assert process_spec({**two, "KERAS_DISTRIBUTION_NUM_PROCESSES": "1"}) is None
    assert process_spec(two) == ProcessSpec("10.0.0.1:1234", 2, 1, 60.0)
    assert process_spec({**two, "KZOO_COORDINATOR_TIMEOUT": "2.5"}).timeout_s == 2.5
    bad = {
        "KERAS_DISTRIBUTION_NUM_PROCESSES": ("two", "KERAS_DISTRIBUTION_NUM_PROCESSES='two' "
                                             "must be a number >= 1"),
        "KERAS_DISTRIBUTION_PROCESS_ID": ("2", "KERAS_DISTRIBUTION_PROCESS_ID=2 must be below "
                                          "KERAS_DISTRIBUTION_NUM_PROCESSES=2"),
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": ("a:1,b:1,c:1", "KERAS_DISTRIBUTION_JOB_ADDRESSES "
                                             "lists 3 addresses for "
                                             "KERAS_DISTRIBUTION_NUM_PROCESSES=2; give one per "
                                             "process, or process 0's alone"),
        "KZOO_COORDINATOR_TIMEOUT": ("nan", "KZOO_COORDINATOR_TIMEOUT='nan' must be a number "
                                            ">= 0.001"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ValueError) as caught:
            process_spec({**two, key: value})
        assert str(caught.value) == message
    for key in ("KERAS_DISTRIBUTION_PROCESS_ID", "KERAS_DISTRIBUTION_JOB_ADDRESSES"):
        with pytest.raises(ValueError, match=f"needs {key}"):
            process_spec({k: v for k, v in two.items() if k != key})
    with pytest.raises(ValueError, match="must be divisible by the 2 processes"):
        ProcessSlice(0, 2).get_per_replica_batch_size(7)
    assert ProcessSlice(1, 2).get_per_replica_batch_size(8) == 4
    # one process: nothing gathered, nothing wrapped; process 1 of 2 is not the chief
    marker = object()
    assert host_callbacks([marker]) == [marker]
    assert is_chief()
    for key, value in two.items():
        monkeypatch.setenv(key, value)
    assert not is_chief()
    # the parent runs TensorFlow: several processes are JAX's, and `none` is refused first
    with pytest.raises(ValueError) as caught:
        get_strategy("data_parallel")
    assert str(caught.value).startswith("several processes (KERAS_DISTRIBUTION_NUM_PROCESSES) "
                                        "need the jax backend, not tensorflow")
    with pytest.raises(ValueError, match="2 processes .* need distribution data_parallel, fsdp "
                                         "or tensor_parallel; got distribution 'none'"):
        get_strategy("none")


if __name__ == "__main__" and sys.argv[1:2] in (["process"], ["single"]):
    child(sys.argv[1], sys.argv[2])
elif __name__ == "__main__" and sys.argv[1:2] == ["resume"]:
    resume(sys.argv[2])
