"""Checkpoints written shard by shard (Orbax) inside the run folder's protocol, without JAX.

The runs themselves are in the JAX children of the sharding tests, which read their folders:
`test_sharding_resume.py` (fsdp 1x4: the folder is Orbax, its manifest covers every file, a
damaged shard falls back to the previous checkpoint naming the file, resumes on 1x2 and one
device with the same losses, a sharded run resumes from an `.h5` checkpoint) and
`test_sharding_processes.py` (2 processes x 2 devices: each writes its own shards of one
checkpoint; the tensor_parallel run resumes in one process on one device with the same
losses). Here, on TensorFlow in the test process: the format is chosen by the state (whole
state keeps `.weights.h5`), the manifest lists the files of subfolders and is checked for
each, a manifest naming a path outside its folder is refused, and an Orbax checkpoint met on
another backend stops the resume with one line instead of being skipped as damaged.
"""

import json
import re
import tomllib

import keras
import numpy as np
import pytest

from tests.helpers import ROOT


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
    return model


def _orbax_folder(backup, step):
    """A checkpoint folder in the Orbax layout (files in subfolders), sealed by kzoo: what a
    sharded JAX run leaves (the bytes are stand-ins)."""
    from kzoo.training import checkpoints

    tmp = backup / (checkpoints.checkpoint_name(step) + ".tmp")
    for name in ("_METADATA", "manifest.ocdbt", "ocdbt.process_0/d/0a1b",
                 "ocdbt.process_1/d/2c3d", "array_metadatas/process_1"):
        path = tmp / checkpoints.SHARDS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * 8)
    checkpoints._seal(tmp, backup / checkpoints.checkpoint_name(step), step, {"best": 1.0})
    return backup / checkpoints.checkpoint_name(step)


def test_whole_state_keeps_the_h5_format(tmp_path):
    from kzoo.training.checkpoints import is_sharded, save_checkpoint

    model = _model()
    assert not is_sharded(model)  # one device: nothing is split
    folder = save_checkpoint(model, tmp_path / "backup", step=1, state={})
    assert sorted(p.name for p in folder.iterdir()) == [
        "ckpt.weights.h5", "manifest.json", "state.json"]


def test_the_manifest_covers_every_file_of_subfolders_and_names_a_damaged_one(tmp_path):
    from kzoo.training.checkpoints import MANIFEST, verify_checkpoint

    folder = _orbax_folder(tmp_path / "backup", 4)
    listed = sorted(json.loads((folder / MANIFEST).read_text())["files"])
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if p.is_file() and p.name != MANIFEST)
    assert listed == present and "weights/ocdbt.process_1/d/2c3d" in listed
    assert (tmp_path / "backup/LATEST").read_text() == "step-0000004"
    assert verify_checkpoint(folder) is None
    shard = folder / "weights/ocdbt.process_1/d/2c3d"
    shard.write_bytes(b"X" + shard.read_bytes()[1:])  # same size, one byte changed
    assert verify_checkpoint(folder) == (f"{shard} does not match its sha256 in the manifest "
                                         "(damaged)")
    shard.unlink()
    assert verify_checkpoint(folder) == f"{shard} is missing"


def test_a_manifest_naming_a_path_outside_its_folder_is_refused(tmp_path):
    from kzoo.training.checkpoints import MANIFEST, verify_checkpoint

    folder = _orbax_folder(tmp_path / "backup", 2)
    (tmp_path / "elsewhere").write_text("not the checkpoint's")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["../../elsewhere"] = {"bytes": 19, "sha256": "0" * 64}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert verify_checkpoint(folder) == (f"{folder / MANIFEST} is not a valid manifest "
                                         "(entry '../../elsewhere')")


def test_an_orbax_checkpoint_on_another_backend_stops_the_resume_in_one_line(tmp_path, capsys):
    from kzoo.training.checkpoints import restore_checkpoint, save_checkpoint
    from kzoo.training.folder_io import RunFolderError

    model = _model()
    save_checkpoint(model, tmp_path / "backup", step=1, state={}, keep=3)  # an older .h5
    newest = _orbax_folder(tmp_path / "backup", 2)
    with pytest.raises(RunFolderError) as caught:
        restore_checkpoint(model, tmp_path / "backup")
    assert str(caught.value) == (
        f"{newest} was written shard by shard (Orbax) by a sharded JAX run; resume it with "
        "KERAS_BACKEND=jax, not tensorflow")
    assert "warning" not in capsys.readouterr().err  # not taken for damage, not skipped


def test_orbax_is_a_dev_dependency_next_to_jax():
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["dev"]
    names = [re.split(r"[\[<>=!~ ]", d, maxsplit=1)[0] for d in dev]
    assert "orbax-checkpoint" in names and "jax" in names
