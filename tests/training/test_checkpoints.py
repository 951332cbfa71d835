"""Verified checkpoints: manifest, pruning, each kind of damage and the fall-back, full disks."""

import contextlib
import json
import re
import shutil

import numpy as np
import pytest

from kzoo.models import CausalLM
from kzoo.training.checkpoints import (
    LATEST,
    MANIFEST,
    STATE,
    WEIGHTS,
    list_checkpoints,
    restore_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from kzoo.training.optimizers import build_adamw
from kzoo.training.run_folder import RunFolderError


def tiny_model():
    model = CausalLM.from_preset("gpt_nano", vocab_size=61, max_sequence_length=16)
    model.compile(optimizer=build_adamw(model, 1e-2), jit_compile=False)
    return model


def step(model, seed):
    x = np.random.default_rng(seed).integers(0, 61, (2, 9))
    model.fit(x[:, :-1], x[:, 1:], epochs=1, verbose=0)


@pytest.fixture
def three_checkpoints(tmp_path):
    """Checkpoints at steps 1, 2 and 3 (keep=3), and the weights each holds."""
    model, saved = tiny_model(), {}
    for i in (1, 2, 3):
        step(model, i)
        save_checkpoint(model, tmp_path, step=i, state={"best": float(i)}, keep=3)
        saved[i] = [w.copy() for w in model.get_weights()]
    return tmp_path, saved


def assert_weights(model, expected):
    for a, b in zip(model.get_weights(), expected):
        np.testing.assert_array_equal(a, b)


def test_manifest_names_every_file_with_size_and_sha256(three_checkpoints):
    backup, _ = three_checkpoints
    manifest = json.loads((backup / "step-0000003" / MANIFEST).read_text())
    assert manifest["step"] == 3 and set(manifest["files"]) == {WEIGHTS, STATE}
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (backup / "step-0000003" / name).stat().st_size
        assert len(entry["sha256"]) == 64
    assert (backup / LATEST).read_text() == "step-0000003"
    assert [p.name for p in list_checkpoints(backup)] == [
        "step-0000003", "step-0000002", "step-0000001"]
    assert verify_checkpoint(backup / "step-0000003") is None


def test_keep_prunes_oldest_only_after_a_new_one_is_intact(tmp_path):
    model = tiny_model()
    for i in (1, 2, 3, 4):
        step(model, i)
        save_checkpoint(model, tmp_path, step=i, state={}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000004", "step-0000003"]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path):
    path.write_bytes(b"")


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, target, expected", [
    (_truncate, WEIGHTS, "has .* bytes, the manifest says"),
    (_empty, WEIGHTS, "has 0 bytes"),
    (_flip, WEIGHTS, "does not match its sha256"),
    (_flip, STATE, "does not match its sha256"),
    (_empty, MANIFEST, "not a valid manifest"),
    (None, None, "is missing"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(three_checkpoints, capsys,
                                                                damage, target, expected):
    backup, saved = three_checkpoints
    newest = backup / "step-0000003"
    if damage is None:
        shutil.rmtree(newest)  # LATEST still names the missing folder
    else:
        damage(newest / target)
    model = tiny_model()
    state = restore_checkpoint(model, backup)
    assert state["step"] == 2 and state["best"] == 2.0
    assert_weights(model, saved[2])
    assert int(model.optimizer.iterations.numpy()) == 2
    err = capsys.readouterr().err
    assert "step-0000003 is damaged" in err and "falling back" in err
    assert re.search(expected, err), err
    if target:
        assert str(newest / target) in err  # the damaged file is named


def test_no_intact_checkpoint_refuses_and_names_each_problem(three_checkpoints):
    backup, _ = three_checkpoints
    for folder in list_checkpoints(backup):
        _flip(folder / WEIGHTS)
    with pytest.raises(RunFolderError, match="no intact checkpoint in .*start it again"):
        restore_checkpoint(tiny_model(), backup)
    # Nothing was removed: a person can still rescue what is there.
    assert len(list_checkpoints(backup)) == 3


def test_state_json_that_is_not_json_names_the_file(tmp_path):
    model = tiny_model()
    step(model, 0)
    folder = save_checkpoint(model, tmp_path, step=1, state={}, keep=1)
    (folder / MANIFEST).unlink()  # as an older kzoo wrote it: no manifest to catch it
    (folder / STATE).write_text("{not json")
    with pytest.raises(RunFolderError, match=f"{folder / STATE}: not a readable"):
        restore_checkpoint(tiny_model(), tmp_path)


def test_low_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    model = tiny_model()
    step(model, 0)
    save_checkpoint(model, tmp_path, step=1, state={}, keep=2)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: usage._replace(free=1000))
    with pytest.raises(RunFolderError, match=rf"not enough free space in {tmp_path} .*MiB"):
        save_checkpoint(model, tmp_path, step=2, state={}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "step-0000001"]


def test_a_full_disk_is_one_clear_error_and_keeps_the_last_checkpoint(small_tmpfs):
    # gpt_nano with 61 ids: about 1 MiB of weights and optimizer state per checkpoint.
    model = tiny_model()
    step(model, 0)
    save_checkpoint(model, small_tmpfs, step=1, state={}, keep=3)
    with pytest.raises(RunFolderError, match=f"in {small_tmpfs}"):
        for i in range(2, 10):
            step(model, i)
            save_checkpoint(model, small_tmpfs, step=i, state={}, keep=3)
    assert not any(p.name.endswith(".tmp") for p in small_tmpfs.iterdir())
    newest = list_checkpoints(small_tmpfs)[0]
    assert verify_checkpoint(newest) is None  # every checkpoint left is intact
    assert restore_checkpoint(tiny_model(), small_tmpfs)["step"] == int(newest.name[5:])


def test_running_out_of_space_while_writing_is_one_clear_error(small_tmpfs):
    # The free-space check before a checkpoint is an estimate; a write that still hits a
    # full disk turns the OS error into the same one-line message and leaves no temporary
    # file. (Shown on the run folder's JSON writes: HDF5 itself, hitting ENOSPC inside
    # save_weights, crashes the interpreter at exit, which is why the check comes first.)
    from kzoo.training.run_folder import write_json_atomic

    filler = small_tmpfs / "filler"
    with filler.open("wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"x" * (1 << 16))
    with pytest.raises(RunFolderError, match=f"no space left on the device holding {small_tmpfs}"):
        write_json_atomic(small_tmpfs / "kzoo-run.json", {"recipe": "x" * 100_000})
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]
