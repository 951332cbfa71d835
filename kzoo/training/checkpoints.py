"""Verified, resumable checkpoints: `backup/step-NNNNNNN/` with a manifest of checksums.

Each checkpoint folder holds the model's weights and optimizer state, `state.json` (global
step, best validation loss, the last interval's logs) and `manifest.json` (size and sha256 of
every other file in the folder, subfolders included). The weights are in one of two formats,
told on restore by the files present:

- `ckpt.weights.h5` (Keras' `save_weights`): whole arrays, for every run whose state is whole
  on each device (one device, data_parallel). Under several processes they gather the state
  to host memory first (`kzoo.training.distribute.on_host`) and process 0 writes.
- `weights/` (Orbax, `kzoo.backend.orbax_checkpoints`): for state split over devices (fsdp,
  tensor_parallel). Every process writes the shards its own devices hold, nothing is gathered;
  `weights/ocdbt.process_<i>/` holds process i's. Restoring reads with the current run's
  shardings as targets, so a run saved on a 1x4 mesh resumes on 1x2 or one device.

Either way the folder is written into `step-NNNNNNN.tmp/`; only once every process finished
(and hashed the shards it wrote, in parallel) does process 0 write the manifest, rename the
folder into place and point `backup/LATEST` at it (a temporary file and `os.replace`), so a
`kill -9` at any moment leaves every named checkpoint complete. The last `keep` intact
checkpoints stay. `restore_checkpoint` verifies the newest against its manifest and falls back,
with a warning naming the damaged file, to the newest intact one; a sharded run resumes from an
`.h5` checkpoint as well (an older kzoo's, or one written on one device).

Before writing, the free space is checked against the checkpoint's size, so a full disk gives
one clear error naming the folder and the bytes needed, and no half-written file.

Example:

```python
from kzoo.training.checkpoints import list_checkpoints, save_checkpoint
save_checkpoint(model, "runs/x/backup", step=100, state={"best": 1.9}, keep=2)
list_checkpoints("runs/x/backup")       # [PosixPath('runs/x/backup/step-0000100')]
```

>>> checkpoint_name(250)
'step-0000250'
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
from pathlib import Path

from kzoo._files import file_sha256
from kzoo.backend import name as backend_name
from kzoo.backend import orbax_checkpoints, processes
from kzoo.training.folder_io import RunFolderError, write_error

LATEST = "LATEST"
WEIGHTS = "ckpt.weights.h5"
SHARDS = orbax_checkpoints.FOLDER  # "weights/": written shard by shard (Orbax)
STATE = "state.json"
MANIFEST = "manifest.json"
HASHED = "hashed.process_"  # + "<i>.json": process i's shards' entries, until `_seal` merges them


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint at global `step`."""
    return f"step-{step:07d}"


def list_checkpoints(backup_dir) -> list[Path]:
    """Complete-looking checkpoint folders, newest (highest step) first."""
    backup_dir = Path(backup_dir)
    if not backup_dir.is_dir():
        return []
    found = [p for p in backup_dir.glob("step-*")
             if p.is_dir() and not p.name.endswith(".tmp") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def variables_bytes(model) -> int:
    """Bytes of the model's and its optimizer's variables (what a checkpoint stores)."""
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    total = 0
    for v in variables:
        size = 1
        for dim in v.shape:
            size *= int(dim)
        total += size * _itemsize(v.dtype)
    return total


def _itemsize(dtype) -> int:
    import numpy as np

    try:
        return np.dtype(str(dtype).replace("bfloat16", "float16")).itemsize
    except TypeError:
        return 4


def ensure_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise `RunFolderError` unless `folder`'s file system has `needed` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RunFolderError(
            f"not enough free space in {folder} to write {what}: it needs about "
            f"{_mib(needed)}, {_mib(free)} is free; free space there and rerun to resume")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def state_variables(model) -> list:
    """What a checkpoint holds: the model's variables, then its optimizer's."""
    optimizer = getattr(model, "optimizer", None)
    return [*model.variables, *(optimizer.variables if optimizer is not None else ())]


def is_sharded(model) -> bool:
    """True when `model`'s state is split over devices: its checkpoints are then written
    shard by shard, by every process (Orbax); otherwise as one `.weights.h5` file.

    Raises:
        ValueError: the state is split but Orbax (orbax-checkpoint) is not installed.
    """
    spread = orbax_checkpoints.is_spread(state_variables(model))
    if spread:
        orbax_checkpoints.require()
    return spread


def save_checkpoint(model, backup_dir, step: int, state: dict, keep: int = 2) -> Path:
    """Write an intact checkpoint of `model` at global `step`, then prune to `keep`.

    State split over devices (fsdp, tensor_parallel) is written with Orbax, each process its
    own shards: then every process of the run calls this, and process 0 alone writes the
    rest (state, manifest, rename, LATEST, pruning). Otherwise one `.weights.h5` file (under
    several processes, process 0 alone calls this, inside `on_host`).

    Args:
        model: keras.Model. compiled; its weights and optimizer state are saved.
        backup_dir: str | PathLike. the `backup/` folder.
        step: int. the global step (optimizer iterations) the weights belong to.
        state: dict. JSON-serializable extra state (best loss, last logs).
        keep: int. intact checkpoints to keep (>= 1); older ones are removed.

    Returns:
        Path. the new checkpoint folder.

    Raises:
        RunFolderError: not enough free space (nothing half-written is left behind).
    """
    backup_dir = Path(backup_dir)
    name = checkpoint_name(step)
    tmp, final = backup_dir / (name + ".tmp"), backup_dir / name
    variables = state_variables(model)
    spread = is_sharded(model)  # which also refuses, in one line, a split state without Orbax
    chief = processes.index() == 0
    if not chief and not spread:
        return final  # whole state: process 0 writes it alone (inside on_host)
    if chief:
        backup_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    # Weights plus the files' own bookkeeping (HDF5: about 1 KiB a variable). Under several
    # processes each checks the shared folder for the whole (its file system's free space).
    ensure_free_space(backup_dir if backup_dir.is_dir() else backup_dir.parent,
                      int(variables_bytes(model) * 1.05) + (2 << 20), f"the checkpoint {name}")
    failure = None
    try:
        if chief:
            tmp.mkdir()
        if spread:
            orbax_checkpoints.barrier(f"kzoo-checkpoint-{step}-folder")  # tmp/ is there
            orbax_checkpoints.save_tree(tmp / SHARDS, variables)
            _hash_own_shards(tmp)
            orbax_checkpoints.barrier(f"kzoo-checkpoint-{step}-written")  # every shard is in
        else:
            model.save_weights(tmp / WEIGHTS)
        if chief:
            _seal(tmp, final, step, state)
    except OSError as error:
        failure = write_error(tmp, error)
        error.__traceback__ = None  # its frames hold the failed write's open h5py objects
    if failure is not None:
        release_failed_write()
        if chief:
            shutil.rmtree(tmp, ignore_errors=True)
            (backup_dir / (LATEST + ".tmp")).unlink(missing_ok=True)
        raise failure
    if chief:
        for old in list_checkpoints(backup_dir)[max(1, keep):]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _seal(tmp: Path, final: Path, step: int, state: dict) -> None:
    """Process 0, once the weights are written: state, manifest over every file (the entries
    the processes wrote for their own shards, `_hash_own_shards`, merged in), rename, LATEST."""
    (tmp / STATE).write_text(json.dumps(dict(state, step=step)), encoding="utf-8")
    files = {}
    for listing in sorted(tmp.glob(HASHED + "*.json")):  # the processes' own shards, hashed
        files.update(json.loads(listing.read_text(encoding="utf-8")))
        listing.unlink()
    paths = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != MANIFEST
                   and p.relative_to(tmp).as_posix() not in files)
    files = dict(sorted({**files, **_entries(tmp, paths)}.items()))
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1),
                                encoding="utf-8")
    _fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = final.parent / (LATEST + ".tmp")
    pointer.write_text(final.name, encoding="utf-8")
    os.replace(pointer, final.parent / LATEST)


def _entries(tmp: Path, paths) -> dict:
    """The manifest's entries of `paths`: {path relative to `tmp`: {"bytes", "sha256"}}."""
    return {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size,
                                            "sha256": file_sha256(p)} for p in paths}


def _hash_own_shards(tmp: Path) -> None:
    """Every process, once its shards are written: their manifest entries, into a file of
    `tmp` that process 0 merges into the manifest (`_seal`). Each process hashes what it wrote,
    all at once, instead of process 0 reading every process's shards after them."""
    index = processes.index()
    own = tmp / SHARDS / orbax_checkpoints.process_folder(index)
    entries = _entries(tmp, sorted(p for p in own.rglob("*") if p.is_file()))
    (tmp / f"{HASHED}{index}.json").write_text(json.dumps(entries), encoding="utf-8")


def release_failed_write() -> None:
    """Close the file objects a failed h5py write leaves open, now, while their file system
    is still there: left to the interpreter's exit they crash it (seen on a full tmpfs)."""
    gc.collect()


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def verify_checkpoint(folder: Path) -> str | None:
    """Why checkpoint `folder` cannot be trusted (naming the file), or None when intact."""
    if not folder.is_dir():
        return f"{folder} is missing"
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        if ((folder / WEIGHTS).is_file() or (folder / SHARDS).is_dir()) and (
                folder / STATE).is_file():
            return None  # written by an older kzoo, before manifests: nothing to check against
        return f"{manifest_path} is missing"
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        return f"{manifest_path} is not a valid manifest ({error})"
    for name, expected in files.items():
        path = folder / name
        if not isinstance(expected, dict) or ".." in Path(name).parts or Path(name).is_absolute():
            return f"{manifest_path} is not a valid manifest (entry {name!r})"
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{path} has {size} bytes, the manifest says {expected.get('bytes')}"
        if file_sha256(path) != expected.get("sha256"):
            return f"{path} does not match its sha256 in the manifest (damaged)"
    return None


def read_state(folder: Path) -> dict:
    """The checkpoint's `state.json`; a one-line error naming the file when it is not valid."""
    path = folder / STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path}: not a readable checkpoint state ({error})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise RunFolderError(f"{path}: no integer 'step' in the checkpoint state")
    return state


def restore_checkpoint(model, backup_dir) -> dict | None:
    """Load the newest intact checkpoint into `model` (and its optimizer); return its state.

    A damaged newest checkpoint (truncated, empty, bytes flipped, missing) is reported on
    stderr, naming the file, and the next newest intact one is used.

    Returns:
        dict | None. the checkpoint's state (with its `step`), None when there is none.

    Raises:
        RunFolderError: checkpoints exist but none is intact.
    """
    backup_dir = Path(backup_dir)
    # Highest step first: a folder is renamed into place only once complete, so one newer
    # than LATEST (killed before the pointer moved) is as good.
    candidates = list_checkpoints(backup_dir)
    pointer = backup_dir / LATEST
    if pointer.is_file():
        named = backup_dir / pointer.read_text(encoding="utf-8", errors="replace").strip()
        if named.name.startswith("step-") and named not in candidates:
            candidates.append(named)  # reported as missing below
            candidates.sort(key=lambda p: p.name, reverse=True)
    if not candidates:
        return None
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # optimizer slots must exist to load.
    problems = []
    for folder in candidates:
        problem = verify_checkpoint(folder)
        if problem is None:
            try:
                state = read_state(folder)
                _load(model, folder)
            except _WrongBackend:
                raise
            except (RunFolderError, OSError, ValueError) as error:
                read = folder / (SHARDS if (folder / SHARDS).is_dir() else WEIGHTS)
                problem = f"{read} could not be loaded ({str(error)[:200]})"
        if problem is None:
            if problems:
                print(f"warning: resuming from {folder}, the newest intact checkpoint",
                      file=sys.stderr, flush=True)
            return state
        problems.append(problem)
        print(f"warning: checkpoint {folder.name} is damaged: {problem}; falling back to "
              "an older one", file=sys.stderr, flush=True)
    raise RunFolderError(f"no intact checkpoint in {backup_dir} ({'; '.join(problems)}); "
                         "the run cannot resume: start it again in a new run_dir")


def _load(model, folder: Path) -> None:
    """Load checkpoint `folder`'s weights, in the format its files tell."""
    if not (folder / SHARDS).is_dir():
        model.load_weights(folder / WEIGHTS)
        return
    if backend_name() != "jax":
        # not a damaged checkpoint: said at once rather than falling back past it
        raise _WrongBackend(f"{folder} was written shard by shard (Orbax) by a sharded JAX "
                            f"run; resume it with KERAS_BACKEND=jax, not {backend_name()}")
    orbax_checkpoints.restore_tree(folder / SHARDS, state_variables(model))


class _WrongBackend(RunFolderError):
    pass
