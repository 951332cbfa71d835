"""End-to-end pre-training: run folder contents, resume after kill -9, NaN stop, bad input."""

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import keras
import pytest

from kzoo.tokenizers import load_tokenizer
from kzoo.training import NaNLossError, PretrainConfig, load_config, pretrain
from tests.recipes.kill_points import (
    assert_killed_mid_checkpoint,
    entries,
    kill_mid_checkpoint,
    kill_when,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes/configs/gpt/nano_pydocs_pretrain.yaml"

# A tiny, fast variant of the demo config (char tokenizer, 2-layer model, a few steps).
TINY = [
    "tokenizer.kind=char", "tokenizer.vocab_size=null", "model.args={max_sequence_length: 32}",
    "train.block_size=16", "train.batch_size=4", "train.steps=6", "train.eval_interval=2",
    "train.val_batches=2", "train.warmup_steps=2", "train.verbose=0",
    "sample.max_new_tokens=8", "train.tensorboard=false", "train.jit_compile=false",
]
# The shared reference run: long enough that a subprocess can be killed mid-way.
STEPS, INTERVAL = 60, 10


def tiny(run_dir, *extra):
    return load_config(DEMO, PretrainConfig, [*TINY, f"run_dir={run_dir}", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run shared by the tests below (they copy it before changing it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    result = pretrain(tiny(run, f"train.steps={STEPS}", f"train.eval_interval={INTERVAL}",
                           "train.tensorboard=true"))
    return run, result


def copy_of(finished, tmp_path):
    shutil.copytree(finished[0], tmp_path / "run")
    return tmp_path / "run"


def test_run_folder_holds_everything(finished):
    run, result = finished
    for name in ("config.yaml", "tokenizer/tokenizer.json", "model.keras", "best.keras",
                 "metrics.csv", "loss.png", "backup/LATEST"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").rglob("*tfevents*"))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(float(r["step"])) for r in rows] == list(range(INTERVAL, STEPS + 1, INTERVAL))
    assert {"loss", "val_loss", "val_perplexity", "lr", "tokens_per_s"} <= set(rows[0])
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])  # it learns
    assert result["val_loss"] == pytest.approx(float(rows[-1]["val_loss"]))
    assert result["sample"].startswith('The "for" statement')
    # Later steps need only the folder: config, tokenizer and model load from it; the model
    # is saved uncompiled, so loading it needs no training classes.
    with zipfile.ZipFile(run / "model.keras") as archive:
        assert not json.loads(archive.read("config.json")).get("compile_config")
    model = keras.models.load_model(run / "model.keras")
    tok = load_tokenizer(run / "tokenizer")
    assert model.vocab_size == tok.vocab_size
    assert load_config(run / "config.yaml", PretrainConfig).train.steps == STEPS


def test_rerun_of_a_finished_run_trains_no_more(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    again = pretrain(tiny(run, f"train.steps={STEPS}", f"train.eval_interval={INTERVAL}"))
    assert again["resumed_from"] == STEPS


def test_nan_stops_and_keeps_the_last_good_checkpoint(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    name = f"step-{STEPS:07d}"
    weights = run / "backup" / name / "ckpt.weights.h5"
    before = weights.read_bytes()
    # Step 61 runs on good weights; its update overflows, so step 62 is the first NaN loss.
    with pytest.raises(NaNLossError, match=rf"NaN/inf at step {STEPS + 2}.*{name} is kept"):
        pretrain(tiny(run, f"train.steps={STEPS + INTERVAL}", f"train.eval_interval={INTERVAL}",
                      "train.learning_rate=1e38", "train.warmup_steps=0", "train.clip_norm=null",
                      "train.max_loss_factor=null", "resume=override"))
    assert (run / "backup/LATEST").read_text() == name
    assert weights.read_bytes() == before
    assert not (run / "backup" / f"step-{STEPS + INTERVAL:07d}").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["train.block_size=64"], "block_size=64 exceeds the model's max_sequence_length=32"),
        (["model.args={vocab_size: 50, max_sequence_length: 32}"],
         r"tokenizer has \d+ ids but model.args.vocab_size has vocab_size=50"),
        (["train.batch_size=100000"], "fewer than one batch"),
        (["train.steps_per_execution=4"], "steps_per_execution=4 does not divide"),
        (["train.bogus=1"], "unknown key 'train.bogus'"),
        (["train.steps=ten"], "'train.steps' expects int"),
    ],
)
def test_bad_settings_leave_no_run_folder(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        pretrain(tiny(tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()


def test_bad_corpus_files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.txt").write_bytes(b"hello \xff world")
    with pytest.raises(ValueError, match="empty corpus"):
        pretrain(tiny(tmp_path / "run", f"data.source={tmp_path / 'empty.txt'}"))
    with pytest.raises(ValueError, match=r"bad\.txt is not UTF-8.*byte offset 6"):
        pretrain(tiny(tmp_path / "run", f"data.source={tmp_path / 'bad.txt'}"))
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_different_tokenizer(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    with pytest.raises(ValueError, match="different run .changed: tokenizer"):
        pretrain(tiny(run, "tokenizer.kind=byte"))
    assert (run / "backup/LATEST").is_file()  # nothing lost


def test_init_from_model_with_other_vocabulary(finished, tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer has 257 ids but the model .*vocab_size=\d+"):
        pretrain(tiny(tmp_path / "b", "tokenizer.kind=byte",
                      f"model.init_from={finished[0] / 'model.keras'}"))
    assert not (tmp_path / "b").exists()


def _command(run_dir):
    args = [*TINY, f"run_dir={run_dir}", f"train.steps={STEPS}",
            f"train.eval_interval={INTERVAL}"]
    cmd = [sys.executable, str(ROOT / "recipes/pretrain.py"), "--config", str(DEMO)]
    for a in args:
        cmd += ["--set", a]
    return cmd


def test_kill_9_then_same_command_resumes_and_matches_uninterrupted(finished, tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    run = tmp_path / "killed"
    proc = subprocess.Popen(_command(run), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    latest = run / "backup/LATEST"
    # kill -9 right after the first backup landed (checked with the child frozen)
    assert kill_when(proc, latest.is_file) is not None, "finished or failed before the kill"
    saved = int(latest.read_text().split("-")[1])
    assert INTERVAL <= saved < STEPS

    out = tmp_path / "resumed.json"
    done = subprocess.run([*_command(run), "--result-json", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"from step {saved}" in done.stdout
    resumed = json.loads(out.read_text())
    assert resumed["resumed_from"] == saved
    # Deterministic data order + restored optimizer state: same result as never stopping.
    assert resumed["val_loss"] == pytest.approx(finished[1]["val_loss"], rel=1e-4, abs=1e-4)


# ---------------------------------------------------------------- run folders you can trust
def _steps(run):
    return [int(r["step"]) for r in csv.DictReader((run / "metrics.csv").open())]


def _snapshot(run):
    """Every file of a run folder with its bytes (to show a refusal changed nothing)."""
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _back_to_step_50(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    shutil.rmtree(run / "backup" / f"step-{STEPS:07d}")
    (run / "backup/LATEST").write_text(f"step-{STEPS - INTERVAL:07d}")
    return run


@pytest.mark.parametrize("change, new_rows", [
    ("train.eval_interval=3", [51, 54, 57, 60]),
    ("train.steps_per_execution=5", [60]),
])
def test_resume_continues_at_the_exact_saved_step(finished, tmp_path, change, new_rows):
    run = _back_to_step_50(finished, tmp_path)
    result = pretrain(tiny(run, f"train.steps={STEPS}", f"train.eval_interval={INTERVAL}",
                           change))
    assert result["resumed_from"] == STEPS - INTERVAL
    assert _steps(run) == list(range(INTERVAL, STEPS, INTERVAL)) + new_rows
    # The same 10 steps on the same data from the same state: the undisturbed result.
    assert result["val_loss"] == pytest.approx(finished[1]["val_loss"], rel=1e-4, abs=1e-4)
    (record,) = [json.loads(line) for line in (run / "resumes.jsonl").open()]
    key, value = change.split("=")
    assert record["from_step"] == STEPS - INTERVAL and not record["override"]
    assert record["changed"][key][1] == int(value)


def test_changed_training_settings_refuse_or_continue_under_override(finished, tmp_path):
    run = _back_to_step_50(finished, tmp_path)
    before = _snapshot(run)
    args = [f"train.steps={STEPS}", f"train.eval_interval={INTERVAL}"]
    with pytest.raises(ValueError, match=r"other settings \(train.batch_size: 4 -> 8; "
                                         r"train.learning_rate: 0.002 -> 0.001\).*resume=override"):
        pretrain(tiny(run, *args, "train.learning_rate=0.001", "train.batch_size=8"))
    assert _snapshot(run) == before  # nothing written, nothing lost
    result = pretrain(tiny(run, *args, "train.learning_rate=0.001", "resume=override"))
    assert result["resumed_from"] == STEPS - INTERVAL
    (record,) = [json.loads(line) for line in (run / "resumes.jsonl").open()]
    assert record["override"] and record["changed"]["train.learning_rate"] == [0.002, 0.001]
    # config.yaml describes the model in the folder: it was trained on under the new rate.
    assert load_config(run / "config.yaml", PretrainConfig).train.learning_rate == 0.001


def test_a_finished_run_without_its_backup_is_not_trained_over(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    shutil.rmtree(run / "backup")
    before = _snapshot(run)
    with pytest.raises(ValueError, match="holds a trained model .* but no checkpoint"):
        pretrain(tiny(run, f"train.steps={STEPS}", f"train.eval_interval={INTERVAL}"))
    assert _snapshot(run) == before


def test_a_folder_kzoo_did_not_make_is_refused_untouched(tmp_path):
    folder = tmp_path / "mine"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer/vocab.txt").write_text("mine")
    (folder / "config.yaml").write_text("my: settings\n")
    before = _snapshot(folder)
    with pytest.raises(ValueError, match="not empty and is not a kzoo run folder"):
        pretrain(tiny(folder))
    assert _snapshot(folder) == before


def test_dpo_into_a_pretraining_folder_is_refused(finished, tmp_path, capsys):
    import importlib.util

    run = copy_of(finished, tmp_path)
    before = _snapshot(run)
    spec = importlib.util.spec_from_file_location("dpo_recipe", ROOT / "recipes/dpo.py")
    dpo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dpo)
    code = dpo.main(["--config", str(ROOT / "recipes/configs/gpt/baby_instruction_dpo.yaml"),
                     "--set", f"run_dir={run}"])
    assert code == 2
    assert "holds a kzoo pretrain run, not a dpo run" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_a_damaged_newest_checkpoint_falls_back_and_ends_as_undisturbed(finished, tmp_path,
                                                                        capsys):
    run = copy_of(finished, tmp_path)
    (run / "model.keras").unlink()  # as if killed during the final save
    weights = run / "backup" / f"step-{STEPS:07d}" / "ckpt.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 3] ^= 0x01  # one flipped bit
    weights.write_bytes(bytes(data))
    result = pretrain(tiny(run, f"train.steps={STEPS}", f"train.eval_interval={INTERVAL}"))
    err = capsys.readouterr().err
    assert f"{weights} does not match its sha256" in err and "falling back" in err
    assert result["resumed_from"] == STEPS - INTERVAL
    assert result["val_loss"] == pytest.approx(finished[1]["val_loss"], rel=1e-4, abs=1e-4)
    assert _steps(run) == list(range(INTERVAL, STEPS + 1, INTERVAL))


def test_a_finite_explosion_stops_like_a_nan_and_saves_nothing(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    kept = {p: _snapshot(run)[p] for p in _snapshot(run)
            if p.parts[0] == "backup" or p.name.endswith(".keras")}
    with pytest.raises(NaNLossError, match=r"exploded to .* above 1.5 x the starting loss"):
        pretrain(tiny(run, f"train.steps={STEPS + 3 * INTERVAL}",
                      f"train.eval_interval={INTERVAL}", "train.learning_rate=3.0",
                      "train.warmup_steps=0", "train.clip_norm=null",
                      "train.max_loss_factor=1.5", "resume=override"))
    now = _snapshot(run)
    assert {p: now.get(p) for p in kept} == kept  # checkpoints and models as they were
    assert (run / "kzoo-run.json").is_file() and not (run / "run.lock").exists()


def test_two_concurrent_starts_one_refuses_naming_the_other(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    run = tmp_path / "shared"
    long = [*_command(run), "--set", "train.steps=100000"]
    first = subprocess.Popen(long, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run / "kzoo-run.json").is_file() and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(long, env=env, cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert first.poll() is None, "the first run ended before the second started"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and f"in use by another kzoo process (pid {first.pid}" in \
        errors[0]
    assert "Traceback" not in second.stderr


def test_kill_9_anywhere_then_rerun_ends_as_undisturbed(finished, tmp_path):
    """kill -9 three times while a checkpoint is being written and three times at random
    moments, then the same command once more: the result of a run never disturbed.

    Each checkpoint kill lands in a `.tmp` folder that attempt made itself (the stale one an
    earlier attempt left does not count: it would kill the next one before Python starts), in
    three states: the first checkpoint of a fresh folder (step 10), one with a checkpoint to
    fall back on (20), the first after a resume (20 again, over the stale `.tmp` left behind).
    """
    intended = [INTERVAL, 2 * INTERVAL, 2 * INTERVAL]
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    run, rng, outcomes, kills = tmp_path / "killed", random.Random(7), [], []
    backup = run / "backup"
    out = tmp_path / "result.json"
    for attempt in range(7):
        before = entries(backup)
        proc = subprocess.Popen([*_command(run), "--result-json", str(out)], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if attempt < 3:  # mid-checkpoint
            kill = kill_mid_checkpoint(proc, backup, before, intended[attempt], INTERVAL)
            assert_killed_mid_checkpoint(backup, before, kill)
            outcomes.append("mid-checkpoint")
            kills.append(kill["step"])
            continue
        if attempt < 6:  # anywhere: start-up, data, compilation, training, saving
            time.sleep(rng.uniform(1.0, 15.0))
            outcomes.append("random" if proc.poll() is None else "ended")
        else:
            assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
            break
        proc.kill()
        proc.wait()
    assert outcomes[:3] == ["mid-checkpoint"] * 3, outcomes
    # Each at its step or, when the child sealed that checkpoint before it was frozen, later.
    assert all(step >= want for step, want in zip(kills, intended, strict=True)), kills
    result = json.loads(out.read_text())
    assert result["val_loss"] == pytest.approx(finished[1]["val_loss"], rel=1e-4, abs=1e-4)
    assert _steps(run) == list(range(INTERVAL, STEPS + 1, INTERVAL))  # each row once
    assert not (run / "run.lock").exists()
