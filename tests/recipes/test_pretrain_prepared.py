"""Pre-training from a prepared folder (`data.prepared`): kill -9 at any moment and the same
command ends as an undisturbed run; a folder made with another tokenizer is refused by name."""

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kzoo.data.prepare import prepare
from kzoo.training import PretrainConfig, load_config, pretrain
from tests.recipes.kill_points import kill_when

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes/configs/gpt/nano_pydocs_pretrain.yaml"
STEPS, INTERVAL = 30, 10
TINY = ["model.args={max_sequence_length: 32}", "train.block_size=16", "train.batch_size=4",
        f"train.steps={STEPS}", f"train.eval_interval={INTERVAL}", "train.val_batches=2",
        "train.warmup_steps=2", "train.verbose=0", "sample.max_new_tokens=8",
        "train.tensorboard=false", "train.jit_compile=false", "data.packing=bos_aligned"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A prepared folder (Shakespeare's paragraphs, char tokenizer) and an undisturbed run."""
    from tests.conftest import shared_data_file

    tmp = tmp_path_factory.mktemp("prepared")
    text = shared_data_file("tinyshakespeare.txt").read_text()
    (tmp / "plays.jsonl").write_text("".join(json.dumps({"text": p}) + "\n"
                                             for p in text.split("\n\n") if p.strip()))
    prepare([str(tmp / "plays.jsonl")], tmp / "prepared", tokenizer="char",
            shard_tokens=100_000, validation_fraction=0.05, progress=False)
    result = pretrain(config(tmp / "run", tmp / "prepared"))
    return tmp, result


def config(run, folder, *extra):
    return load_config(DEMO, PretrainConfig,
                       [*TINY, f"data.prepared={folder}", f"run_dir={run}", *extra])


def command(run, folder, *extra):
    sets = [*TINY, f"data.prepared={folder}", f"run_dir={run}", *extra]
    return [sys.executable, "-m", "kzoo.cli.main", "pretrain", "--config", str(DEMO),
            *sum((["--set", s] for s in sets), [])]


def steps(run):
    return [int(r["step"]) for r in csv.DictReader((run / "metrics.csv").open())]


def test_the_run_reads_the_folders_tokenizer_and_trains(finished):
    tmp, result = finished
    assert steps(tmp / "run") == [10, 20, 30]
    assert result["val_loss"] < 4.0  # 65 characters: log(65) = 4.17 before training
    assert (tmp / "run/tokenizer/tokenizer.json").read_bytes() == \
        (tmp / "prepared/tokenizer/tokenizer.json").read_bytes()


def test_kill_9_anywhere_then_the_same_command_ends_as_undisturbed(finished):
    tmp, reference = finished
    run, rng, outcomes = tmp / "killed", random.Random(3), []
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp / "killed.json"
    for attempt in range(3):
        proc = subprocess.Popen([*command(run, tmp / "prepared"), "--result-json", str(out)],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if attempt == 0:  # right after the first backup landed (checked while frozen)
            landed = kill_when(proc, (run / "backup/LATEST").is_file)
            outcomes.append("ended" if landed is None else "after-backup")
            # The first backup, not a later one: nothing else can have been trained past it.
            assert (run / "backup/LATEST").read_text() == f"step-{INTERVAL:07d}", outcomes
            assert not (run / f"backup/step-{2 * INTERVAL:07d}").exists()
            continue
        if attempt == 1:  # anywhere: start-up, shard checks, compilation, training, saving
            time.sleep(rng.uniform(2.0, 12.0))
            outcomes.append("random" if proc.poll() is None else "ended")
        else:
            assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
            break
        proc.kill()  # kill -9
        proc.wait()
    assert outcomes[0] == "after-backup", outcomes
    result = json.loads(out.read_text())
    assert result["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4, abs=1e-4)
    assert steps(run) == [10, 20, 30]  # each row once


def test_a_folder_prepared_again_with_another_tokenizer_is_refused_by_name(finished, tmp_path):
    tmp, _ = finished
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    shutil.rmtree(run / "backup" / f"step-{STEPS:07d}")
    (run / "backup/LATEST").write_text(f"step-{STEPS - INTERVAL:07d}")
    (tmp_path / "plays.jsonl").write_text((tmp / "plays.jsonl").read_text())
    prepare([str(tmp_path / "plays.jsonl")], tmp_path / "prepared", tokenizer="byte",
            validation_fraction=0.05, progress=False)
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(saved.replace(str(tmp / "prepared"),
                                                   str(tmp_path / "prepared")))
    with pytest.raises(ValueError, match=r"was prepared with another tokenizer than the run .*"
                       r"byte with 257 ids \(sha256 \w+\) against char with 6\d ids"):
        pretrain(config(run, tmp_path / "prepared"))
    with pytest.raises(ValueError, match=r"another tokenizer than tokenizer.path .*byte with "
                       r"257 ids .* against char"):
        pretrain(config(tmp_path / "new", tmp_path / "prepared",
                        f"tokenizer.path={tmp / 'run/tokenizer'}"))
    assert not (tmp_path / "new").exists()


def test_bad_prepared_folders_are_one_line_with_exit_code_2(finished, tmp_path):
    tmp, _ = finished
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": "only one document here"}) + "\n")
    prepare([str(tmp_path / "one.jsonl")], tmp_path / "noval", tokenizer="byte",
            validation_fraction=0.0, progress=False)
    for folder, expected in [(tmp_path / "noval", "holds no validation documents"),
                             (tmp_path, "is not a prepared folder")]:
        done = subprocess.run(command(tmp_path / "run", folder), cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env=dict(os.environ,
                                                               TF_CPP_MIN_LOG_LEVEL="3"))
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert expected in done.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "run").exists()


def test_bos_aligned_packing_of_an_in_memory_corpus_starts_rows_at_documents():

    from kzoo.data import train_dataset
    from kzoo.training.pretrain import _load_tokens

    cfg = load_config(DEMO, PretrainConfig, ["tokenizer.kind=char", "tokenizer.vocab_size=null",
                                             "data.packing=bos_aligned"])
    tok, train, _, starts = _load_tokens(cfg, None, resume=False)
    assert starts[0] == 0 and len(starts) > 50
    assert (train[starts[1:-1] - 1] == tok.eot_id).all()  # each start follows an end of text
    rows = next(iter(train_dataset(train, 16, 8, seed=0, packing="bos_aligned",
                                   doc_starts=starts)))[0].numpy()
    firsts = {tuple(train[s:s + 16]) for s in starts}
    assert all(tuple(row) in firsts for row in rows)
