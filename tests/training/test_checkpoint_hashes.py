"""The manifest of a checkpoint written shard by shard: each process hashes its own shards.

Under several processes every process writes its shards into `weights/ocdbt.process_<i>/`
(Orbax); instead of process 0 reading them all back to hash them, each process lists its own
shards' sizes and sha256 in `hashed.process_<i>.json` before the "written" barrier, and process
0 merges those lists into `manifest.json` while sealing, hashing only the rest. Here two
processes are played in turn in this process (`kzoo.backend.processes.index` patched): the
manifest must be the one hashing every file gives, without process 0 hashing the other's.
The real run of two processes is in `test_sharding_processes.py` (JAX children).
"""

import json

from kzoo._files import file_sha256
from kzoo.backend import processes
from kzoo.training import checkpoints

FILES = ("_METADATA", "manifest.ocdbt", "array_metadatas/process_1", "ocdbt.process_0/d/0a1b",
         "ocdbt.process_0/manifest.ocdbt", "ocdbt.process_1/d/2c3d",
         "ocdbt.process_1/manifest.ocdbt")


def _written(tmp):
    """A checkpoint's `.tmp` folder as two processes' Orbax write leaves it (stand-in bytes)."""
    for i, name in enumerate(FILES):
        path = tmp / checkpoints.SHARDS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * (i + 3))


def test_each_process_hashes_its_own_shards_and_process_0_merges_them(tmp_path, monkeypatch):
    backup = tmp_path / "backup"
    tmp = backup / (checkpoints.checkpoint_name(3) + ".tmp")
    _written(tmp)
    for index in (1, 0):  # each process after its shards are written, before the barrier
        monkeypatch.setattr(processes, "index", lambda index=index: index)
        checkpoints._hash_own_shards(tmp)
    listed = json.loads((tmp / f"{checkpoints.HASHED}1.json").read_text())
    assert sorted(listed) == ["weights/ocdbt.process_1/d/2c3d",
                              "weights/ocdbt.process_1/manifest.ocdbt"]

    hashed_by_0 = []  # what process 0 reads back while sealing

    def counted(path):
        hashed_by_0.append(path.relative_to(tmp).as_posix())
        return file_sha256(path)

    monkeypatch.setattr(checkpoints, "file_sha256", counted)
    checkpoints._seal(tmp, backup / checkpoints.checkpoint_name(3), 3, {"best": 1.0})
    assert sorted(hashed_by_0) == ["state.json", "weights/_METADATA",
                                   "weights/array_metadatas/process_1", "weights/manifest.ocdbt"]

    folder = backup / checkpoints.checkpoint_name(3)
    files = json.loads((folder / checkpoints.MANIFEST).read_text())["files"]
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if p.is_file() and p.name != checkpoints.MANIFEST)
    assert list(files) == present  # sorted, every file, the processes' lists gone
    assert not any(name.startswith(checkpoints.HASHED) for name in present)
    for name, entry in files.items():  # what hashing every file in process 0 gave before
        path = folder / name
        assert entry == {"bytes": path.stat().st_size, "sha256": file_sha256(path)}, name
    monkeypatch.undo()
    assert checkpoints.verify_checkpoint(folder) is None
    shard = folder / "weights/ocdbt.process_1/d/2c3d"  # a listed entry is checked like any
    shard.write_bytes(b"X" + shard.read_bytes()[1:])
    assert checkpoints.verify_checkpoint(folder) == (
        f"{shard} does not match its sha256 in the manifest (damaged)")


def test_one_process_without_an_orbax_folder_of_its_own_leaves_the_hashing_to_sealing(
        tmp_path):
    # an h5 checkpoint's folder, or an Orbax layout without `ocdbt.process_<i>/`: an empty
    # list, and process 0 hashes every file as before
    tmp = tmp_path / "step-0000001.tmp"
    (tmp / checkpoints.SHARDS).mkdir(parents=True)
    (tmp / checkpoints.SHARDS / "_METADATA").write_bytes(b"meta")
    checkpoints._hash_own_shards(tmp)
    assert json.loads((tmp / f"{checkpoints.HASHED}0.json").read_text()) == {}
    checkpoints._seal(tmp, tmp_path / "step-0000001", 1, {})
    files = json.loads((tmp_path / "step-0000001" / checkpoints.MANIFEST).read_text())["files"]
    assert sorted(files) == ["state.json", "weights/_METADATA"]
