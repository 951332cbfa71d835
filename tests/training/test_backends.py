"""Pre-training, SFT, run folders and distribution on JAX and PyTorch, against TensorFlow.

The parent (pytest) runs on TensorFlow: it saves the starting weights, starts the children and
runs the reference pre-training and SFT while they run: one child per backend
(`python -m tests.training.backend_checks`, KERAS_BACKEND=jax / torch) runs the pre-training
checks and then SFT; JAX data parallel has a child of its own, started with
`XLA_FLAGS=--xla_force_host_platform_device_count=2`. What is checked on each
backend: importing kzoo.training / kzoo.data / the recipes imports no TensorFlow (tf.data comes
with the first pipeline); `model.fit` on the tf.data pipeline gives TensorFlow's losses and
weights from the same starting weights; the run folder holds the same files; a resume after a
crash continues at the saved step with the optimizer state and ends as the uninterrupted run; a
finished run continues for more steps; a NaN loss stops and keeps the last good checkpoint; a
distribution the backend lacks is a one-line error naming the valid ones; SFT gives
TensorFlow's losses and its NaN guard stops with exit code 3 and no model.

Tolerances (float32): losses across backends `rtol = 1e-5`; weights after 4 AdamW steps
`atol = 1e-5` (Adam divides by sqrt(v), so a weight's update is only as close as its gradient's
relative error); a resume, and 2 devices against 1 on JAX, `rtol = atol = 1e-5`.
"""

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, start_backend_children
from tests.training.backend_checks import (
    INTERVAL,
    STEPS,
    prepared_config,
    pretrain_config,
    rows,
    sft_args,
    write_inputs,
)

BACKENDS = ("jax", "torch")
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
# Three children share 2 CPU cores with the TensorFlow runs of the parent.
CHILD_TIMEOUT_S = 600
# label -> backend: one child per backend runs pre-training and SFT; JAX's data parallel run
# has a process of its own (two host devices are set before JAX starts).
CHILDREN = {"jax": "jax", "torch": "torch", "jax_parallel": "jax"}


def _instruction_data() -> Path | None:
    root = os.environ.get("KZOO_TEST_DATA")
    return Path(root) / "instruction-data.json" if root else None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The children's results ({label: CompletedChild}) and TensorFlow's reference runs."""
    import keras

    from kzoo.recipes import sft
    from kzoo.training import pretrain

    assert keras.backend.backend() == "tensorflow", "the parent must run on TensorFlow"
    workdir = tmp_path_factory.mktemp("backends")
    data = _instruction_data()
    if data is not None and not data.is_file():  # sft_runs fails the SFT tests for it
        data = None
    write_inputs(workdir, data)
    modes = "pretrain,sft" if data else "pretrain"

    def args(label):
        return ["-m", "tests.training.backend_checks", workdir, workdir / f"{label}.json",
                "parallel" if label == "jax_parallel" else modes]

    def env(label):
        # What the recipes set: TensorFlow's start-up lines are then kept off stderr.
        quiet = {"TF_CPP_MIN_LOG_LEVEL": "3"}
        return ({**quiet, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
                if label == "jax_parallel" else quiet)

    with start_backend_children(args, CHILDREN, env=env, timeout_s=CHILD_TIMEOUT_S) as children:
        result = {"workdir": workdir, "sft": data is not None}
        pretrain(pretrain_config(workdir / "tf_run", workdir / "init.keras"))
        result.update(tf_rows=rows(workdir / "tf_run"),
                      tf_files=sorted(p.name for p in (workdir / "tf_run").iterdir()))
        pretrain(prepared_config(workdir / "tf_prepared", workdir / "init.keras"))
        result["tf_prepared_rows"] = rows(workdir / "tf_prepared")
        if data:
            result["tf_sft_code"] = sft.main(sft_args(
                workdir / "tf_sft", workdir / "sft_init.keras", workdir / "sft.json"))
            metrics = workdir / "tf_sft/metrics.json"
            result["tf_sft"] = json.loads(metrics.read_text()) if metrics.exists() else None
        result["children"] = children.wait()
    return result


@pytest.fixture(scope="module")
def pretrain_runs(runs):
    """The pre-training results: `runs` (the name the pre-training tests ask for)."""
    return runs


@pytest.fixture(scope="module")
def sft_runs(runs):
    data = _instruction_data()
    if data is None:
        pytest.skip("KZOO_TEST_DATA is unset; set it to ../shared/data to run this test")
    if not runs["sft"]:
        pytest.fail(f"KZOO_TEST_DATA is set but {data} does not exist")
    assert runs["tf_sft_code"] == 0
    return {**runs, "tensorflow": runs["tf_sft"]}


def _child(runs: dict, label: str) -> dict:
    """What the child `label` found (its OUT file), or the test fails with its stderr tail."""
    runs["children"][label].check()
    return json.loads((runs["workdir"] / f"{label}.json").read_text())


# What TensorFlow 2.21 writes to file descriptor 2 when it is imported without being muted.
TF_START_UP_LINES = ("All log messages before absl::InitializeLog()",
                     "oneDNN custom operations are on", "Could not find cuda drivers")


@pytest.mark.parametrize("label", BACKENDS)
def test_tensorflow_start_up_lines_stay_off_stderr(pretrain_runs, label):
    """On JAX and PyTorch the pre-training imports TensorFlow for tf.data and Keras'
    `set_random_seed`; with TF_CPP_MIN_LOG_LEVEL set, as the recipes set it, its native
    start-up lines must not reach the run's stderr."""
    child = pretrain_runs["children"][label].check()
    found = [line for line in TF_START_UP_LINES if line in child.stderr]
    assert not found, f"KERAS_BACKEND={label} stderr has {found}:\n{child.stderr[-2000:]}"


def _weights(path: Path) -> list:
    import keras

    import kzoo  # noqa: F401  (registers the kzoo classes)

    return keras.saving.load_model(path, compile=False).get_weights()


def _assert_weights_close(a: Path, b: Path, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert len(wa) == len(wb) > 0
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(wa, wb))
    assert worst <= atol, f"{a} and {b} differ by up to {worst:.3g}"


def _assert_same_run(runs: dict, got: dict, ref: dict, run: str, tf_run: str) -> None:
    """A backend's run (folder `run` under the workdir) is TensorFlow's (`tf_run`): each series
    of `got` (name -> values by step) to LOSS_RTOL, the final weights to WEIGHT_ATOL."""
    assert got.keys() == ref.keys()
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=LOSS_RTOL, err_msg=key)
    _assert_weights_close(runs["workdir"] / run / "model.keras",
                          runs["workdir"] / tf_run / "model.keras", WEIGHT_ATOL)


def test_training_and_data_modules_import_no_tensorflow_at_module_level():
    # Static: a module-level `import tensorflow` anywhere in kzoo/training or kzoo/data
    # would load TensorFlow with `import kzoo.training` on JAX and PyTorch.
    offenders = []
    for folder in ("kzoo/training", "kzoo/data"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.parse(path.read_text()).body:
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n.split(".")[0] in ("tensorflow", "tensorflow_datasets") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders


@pytest.mark.parametrize("backend", BACKENDS)
def test_import_loads_no_tensorflow_until_data_is_loaded(pretrain_runs, backend):
    child = _child(pretrain_runs, backend)
    assert child["backend"] == backend
    assert child["tf_at_import"] == []
    assert child["tf_after_data"] is True


@pytest.mark.parametrize("backend", BACKENDS)
def test_pretraining_gives_tensorflows_losses_and_weights(pretrain_runs, backend):
    child = _child(pretrain_runs, backend)
    ref = pretrain_runs["tf_rows"]
    got = child["run_rows"]
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [INTERVAL, STEPS]
    assert ref[-1]["loss"] < ref[0]["loss"]  # it trained
    _assert_same_run(pretrain_runs, {k: [r[k] for r in got] for k in ("loss", "val_loss", "lr")},
                     {k: [r[k] for r in ref] for k in ("loss", "val_loss", "lr")},
                     f"{backend}_pretrain/run", "tf_run")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pretraining_from_a_prepared_folder_gives_tensorflows_losses(pretrain_runs, backend):
    got = _child(pretrain_runs, backend)["prepared_rows"]
    ref = pretrain_runs["tf_prepared_rows"]
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [INTERVAL, STEPS]
    keys = ("loss", "val_loss", "lr")
    _assert_same_run(pretrain_runs, {k: [r[k] for r in got] for k in keys},
                     {k: [r[k] for r in ref] for k in keys},
                     f"{backend}_pretrain/prepared_run", "tf_prepared")
    # not the in-memory corpus's run: the prepared stream is what was read
    assert [r["loss"] for r in ref] != [r["loss"] for r in pretrain_runs["tf_rows"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_folder_is_tensorflows(pretrain_runs, backend):
    child = _child(pretrain_runs, backend)
    assert child["run_files"] == pretrain_runs["tf_files"]
    assert "run.lock" not in child["run_files"]  # released at the end
    assert child["marker"]["recipe"] == "pretrain" and child["marker"]["status"] == "finished"


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_continues_at_the_saved_step_with_the_optimizer_state(pretrain_runs, backend):
    child = _child(pretrain_runs, backend)
    assert child["resumed"]["resumed_from"] == INTERVAL
    (record,) = child["resumes"]
    assert record["from_step"] == INTERVAL and not record["override"]
    assert [r["step"] for r in child["resumed_rows"]] == [INTERVAL, STEPS]
    # Same data order and restored Adam moments: the uninterrupted run's result.
    for key in ("loss", "val_loss"):
        assert child["resumed"][key] == pytest.approx(child["run"][key], rel=1e-5, abs=1e-5)
    workdir = pretrain_runs["workdir"] / f"{backend}_pretrain"
    _assert_weights_close(workdir / "resumed/model.keras", workdir / "run/model.keras", 1e-5)
    # A finished run continued for more steps.
    assert child["more"]["resumed_from"] == STEPS
    assert [r["step"] for r in child["more_rows"]] == [INTERVAL, STEPS, STEPS + INTERVAL]
    assert child["more"]["loss"] < child["run"]["loss"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoints_are_intact_and_resume_on_tensorflow(pretrain_runs, backend, tmp_path):
    import shutil

    from kzoo.training import pretrain
    from kzoo.training.checkpoints import list_checkpoints, verify_checkpoint

    child = _child(pretrain_runs, backend)
    workdir = pretrain_runs["workdir"]
    run = shutil.copytree(workdir / f"{backend}_pretrain/run", tmp_path / "run")
    found = list_checkpoints(run / "backup")
    assert [p.name for p in found] == [f"step-{STEPS:07d}", f"step-{INTERVAL:07d}"]
    assert all(verify_checkpoint(p) is None for p in found)  # manifests match the bytes
    # The backend's weights and Adam state, continued on TensorFlow: the backend's own result.
    result = pretrain(pretrain_config(run, workdir / "init.keras",
                                      f"train.steps={STEPS + INTERVAL}", "resume=override"))
    assert result["resumed_from"] == STEPS
    for key in ("loss", "val_loss"):
        assert result[key] == pytest.approx(child["more"][key], rel=LOSS_RTOL), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(pretrain_runs, backend):
    child = _child(pretrain_runs, backend)
    name = f"step-{STEPS:07d}"
    # Step 5 runs on good weights, its update overflows: step 6 is the first NaN loss.
    assert child["nan_error"] is not None
    assert f"NaN/inf at step {STEPS + 2}" in child["nan_error"] and name in child["nan_error"]
    assert child["nan_latest"] == name
    assert child["nan_weights_unchanged"]
    assert child["nan_backups"] == [f"step-{INTERVAL:07d}", name]


def test_unsupported_distributions_name_the_valid_ones(pretrain_runs):
    torch_child = _child(pretrain_runs, "torch")
    for name in ("data_parallel", "mirrored", "multi_worker"):
        assert torch_child["strategies"][name] == (
            f"ValueError: unknown distribution {name!r} for the torch backend; valid: ['none']")
    jax_child = _child(pretrain_runs, "jax")
    assert jax_child["strategies"]["multi_worker"] == (
        "ValueError: unknown distribution 'multi_worker' for the jax backend; valid: "
        "['data_parallel', 'fsdp', 'mirrored', 'none', 'tensor_parallel']")
    assert jax_child["strategies"]["data_parallel"].startswith("KerasStrategy(DataParallel")
    for child in (torch_child, jax_child):
        assert "\n" not in child["refused"] and "valid:" in child["refused"]
        assert not child["refused_left_folder"]


def test_jax_data_parallel_on_two_devices_equals_one_device(pretrain_runs):
    parallel = _child(pretrain_runs, "jax_parallel")
    single = _child(pretrain_runs, "jax")
    assert parallel["devices"] == parallel["replicas"] == parallel["variable_devices"] == 2
    got, ref = parallel["parallel_rows"], single["run_rows"]
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in ref],
                                   rtol=1e-5, atol=1e-5, err_msg=key)
    workdir = pretrain_runs["workdir"]
    _assert_weights_close(workdir / "jax_parallel/parallel/model.keras",
                          workdir / "jax_pretrain/run/model.keras", 1e-5)
    assert parallel["odd_batch"] == ("train.batch_size=3 must be divisible by the 2 devices of "
                                     "distribution 'data_parallel'")


# ---------------------------------------------------------------------------------------- SFT
@pytest.mark.parametrize("backend", BACKENDS)
def test_sft_gives_tensorflows_losses(sft_runs, backend):
    child = _child(sft_runs, backend)
    assert child["sft_code"] == 0
    got, ref = child["sft_metrics"], sft_runs["tensorflow"]
    assert got["split"] == ref["split"]
    for key in ("val_response_loss_before", "val_response_loss_after"):
        assert got[key] == pytest.approx(ref[key], rel=LOSS_RTOL), key
    assert ref["val_response_loss_after"] < ref["val_response_loss_before"]
    _assert_same_run(sft_runs, {k: got["history"][k] for k in ("loss", "val_loss")},
                     {k: ref["history"][k] for k in ("loss", "val_loss")},
                     f"{backend}_sft/sft", "tf_sft")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sft_nan_stops_with_exit_code_3_and_saves_no_model(sft_runs, backend):
    child = _child(sft_runs, backend)
    assert child["sft_nan_code"] == 3
    assert not child["sft_nan_model"]


def test_sft_dataset_epochs_give_the_same_batches_to_every_iterator():
    # JAX and PyTorch trainers peek at a first batch with an iterator of their own; with
    # `epochs` the batches cannot depend on how many iterators were made.
    from kzoo.data.instruction import sft_dataset, sft_steps

    rows_ = 10
    arrays = {"token_ids": np.arange(rows_ * 5, dtype="int32").reshape(rows_, 5),
              "loss_mask": np.ones((rows_, 5), "float32")}
    ds = sft_dataset(arrays, 4, seed=3, epochs=2)
    first = [np.asarray(x)[:, 0] for x, _, _ in ds]
    second = [np.asarray(x)[:, 0] for x, _, _ in ds]
    assert sft_steps(arrays, 4) == 3 and len(first) == 2 * 3
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    passes = [np.concatenate(first[:3]), np.concatenate(first[3:])]
    for order in passes:
        assert sorted(order.tolist()) == list(range(0, rows_ * 5, 5))  # every row once a pass
    assert not np.array_equal(passes[0], passes[1])  # each pass its own order
    with pytest.raises(ValueError, match="epochs must be None or >= 1, got 0"):
        sft_dataset(arrays, 4, epochs=0)
