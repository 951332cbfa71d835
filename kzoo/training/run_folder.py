"""The run folder every recipe writes: who owns it, one process at a time, and a resume log.

A run folder belongs to one recipe. `kzoo-run.json` (the marker) names the recipe that made
it; a folder that is neither new, empty nor marked by the same recipe is refused, so a run
never deletes or overwrites files it did not create. `run.lock` holds an exclusive `flock`
for as long as the process lives, with its pid, host and start time inside: a second process
on the same folder refuses with those details, and a lock left by a killed process is
detected (the kernel dropped its `flock`), reported and taken over. `resumes.jsonl` records
every resume: when, from which step, and what changed.

Example:

```python
from kzoo.training.run_folder import open_run
with open_run("runs/demo", recipe="sft") as run:   # RunFolderError if another process has it
    (run.root / "notes.txt").write_text("trained by this run")
```

>>> RunDir("runs/x").marker.name
'kzoo-run.json'
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path

from kzoo.training.checkpoints import LATEST, list_checkpoints
from kzoo.training.folder_io import RunFolderError, write_error, write_json_atomic

# RunFolderError and the two writers live in folder_io (checkpoints raise them too) and are
# re-exported here, their documented home.
__all__ = ["LOCK", "MARKER", "RESUMES", "RunDir", "RunFolderError", "RunLock", "check_owner",
           "open_run", "write_error", "write_json_atomic"]

MARKER = "kzoo-run.json"
LOCK = "run.lock"
RESUMES = "resumes.jsonl"

# Folders written by kzoo before the marker existed, recognised by their config.yaml header.
_LEGACY_HEADERS = {
    "# written by kzoo pretrain": "pretrain",
    "# python recipes/sft.py": "sft",
    "# python recipes/dpo.py": "dpo",
    "# python recipes/reward.py": "reward",
}


class RunDir:
    """The layout of one training run's folder (shared by all kzoo recipes).

    ```
    run_dir/
      kzoo-run.json      which recipe made the folder, and whether it finished
      run.lock           held by the process training in it (pid, host, start time)
      config.yaml        resolved config of the model in the folder
      resumes.jsonl      one line per resume: time, step, what changed
      tokenizer/         saved tokenizer (kzoo.tokenizers.load_tokenizer)
      model.keras        final model;  best.keras: best validation loss
      metrics.csv        per-interval loss, val_loss, val_perplexity, lr
      loss.png           loss curves;  tensorboard/: TensorBoard logs
      backup/            verified checkpoints (kzoo.training.checkpoints); LATEST: newest
    ```

    Args:
        root: str | PathLike. the run folder.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.marker = self.root / MARKER
        self.lock = self.root / LOCK
        self.resumes = self.root / RESUMES
        self.config = self.root / "config.yaml"
        self.tokenizer = self.root / "tokenizer"
        self.model = self.root / "model.keras"
        self.best_model = self.root / "best.keras"
        self.metrics = self.root / "metrics.csv"
        self.loss_plot = self.root / "loss.png"
        self.tensorboard = self.root / "tensorboard"
        self.backup = self.root / "backup"

    def has_checkpoint(self) -> bool:
        """True when the folder holds a checkpoint, or LATEST names one (verified when
        restored: a damaged one is reported, never silently trained over)."""
        return bool(list_checkpoints(self.backup)) or (self.backup / LATEST).is_file()

    def recipe(self) -> str | None:
        """The recipe that made this folder (marker, or an older kzoo's config header)."""
        if self.marker.is_file():
            try:
                return json.loads(self.marker.read_text(encoding="utf-8"))["recipe"]
            except (ValueError, KeyError, TypeError) as error:
                raise RunFolderError(f"{self.marker}: not a kzoo run marker ({error})") from None
        if self.config.is_file():
            first = self.config.read_text(encoding="utf-8").split("\n", 1)[0]
            for header, recipe in _LEGACY_HEADERS.items():
                if first.startswith(header):
                    return recipe
        return None

    def finished(self) -> bool:
        """True when the marker says the run completed."""
        if not self.marker.is_file():
            return False
        return json.loads(self.marker.read_text(encoding="utf-8")).get("status") == "finished"

    def mark(self, recipe: str, status: str) -> None:
        """Write the marker (atomically): `recipe` made this folder, it is `status`."""
        write_json_atomic(self.marker, {"recipe": recipe, "status": status, "kzoo": _version(),
                                        "updated": _now()})

    def log_resume(self, step: int, changed: dict, override: bool) -> None:
        """Append one resume record to `resumes.jsonl`."""
        record = {"time": _now(), "from_step": step, "pid": os.getpid(),
                  "host": socket.gethostname(), "changed": changed, "override": override}
        with self.resumes.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kzoo")
    except Exception:  # running from a checkout that was never installed
        return "unknown"


def check_owner(run: RunDir, recipe: str) -> None:
    """Refuse a folder this recipe must not write into.

    Raises:
        RunFolderError: the folder is another recipe's, or not empty and not a kzoo run.
    """
    if not run.root.exists():
        return
    if not run.root.is_dir():
        raise RunFolderError(f"run_dir {run.root} is a file, not a folder")
    owner = run.recipe()
    if owner is None:
        # Only a lock: another process is starting in it (the lock then names it).
        if any(p.name not in (LOCK, MARKER + ".tmp") for p in run.root.iterdir()):
            raise RunFolderError(
                f"run_dir {run.root} is not empty and is not a kzoo run folder; kzoo never "
                "writes into folders it did not create: choose a new or empty run_dir")
    elif owner != recipe:
        raise RunFolderError(f"run_dir {run.root} holds a kzoo {owner} run, not a {recipe} "
                             "run: choose another run_dir")


class RunLock:
    """An exclusive lock on a run folder for the life of this process (`flock` on run.lock).

    Args:
        path: Path. the lock file (`RunDir.lock`).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = None

    def acquire(self) -> None:
        """Take the lock or raise `RunFolderError` naming the process that holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunFolderError(
                    f"run_dir {self.path.parent} is in use by another kzoo process "
                    f"({holder}); wait for it to finish or choose another run_dir") from None
            # The holder may have unlinked the file between our open and flock: retry then.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd, describe=False)
        if previous:
            print(f"warning: {self.path} was left by a process that is gone "
                  f"({_describe(previous)}); taking it over", file=sys.stderr, flush=True)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                  "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _read_holder(fd: int, describe: bool = True):
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        holder = json.loads(raw) if raw else None
    except ValueError:
        holder = {"unreadable": True}
    if not describe:
        return holder
    return _describe(holder) if holder else "pid unknown"


def _describe(holder: dict) -> str:
    if holder.get("unreadable"):
        return "lock details unreadable"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


@contextlib.contextmanager
def open_run(root, recipe: str, enabled: bool = True, resumable: bool = False):
    """Claim run folder `root` for `recipe` for the duration of the block.

    Checks ownership (`check_owner`), creates the folder if needed, takes the lock and writes
    the marker. If the block raises and the folder was created here and holds nothing but
    the marker and the lock, the folder is removed: a failed start leaves nothing behind.

    Args:
        root: str | PathLike. the run folder.
        recipe: str. the recipe's name ("pretrain", "sft", "dpo", ...).
        enabled: bool. False on non-chief workers: no lock, no marker, nothing written.
        resumable: bool. False: a finished run of `recipe` is refused (its results would be
            overwritten); True: the recipe decides what a finished folder means (pretraining
            reports it complete, or continues it).

    Yields:
        RunDir. the folder's layout.
    """
    run = RunDir(root)
    if not enabled:
        yield run
        return
    check_owner(run, recipe)
    created = not run.root.exists()
    # The outermost folder this call creates (run_dir's parents may be new too).
    top = run.root.absolute()
    while not top.parent.exists():
        top = top.parent
    try:
        run.root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"cannot create run_dir {run.root}: {error.strerror}") from None
    lock = RunLock(run.lock)
    lock.acquire()  # refused: the folder is the holder's, so nothing here is removed
    try:
        if not resumable and run.finished():
            raise RunFolderError(f"run_dir {run.root} already holds a finished {recipe} run; "
                                 "choose another run_dir to keep both")
        if not run.marker.is_file():
            run.mark(recipe, "running")
        yield run
    except BaseException:
        if created:
            _remove_if_bare(run, top)
        raise
    finally:
        lock.release()


# What a run writes before it has trained anything worth keeping.
_SETUP = {MARKER, LOCK, "config.yaml", "tokenizer", "tensorboard", "metrics.csv"}


def _remove_if_bare(run: RunDir, top: Path) -> None:
    """Remove a folder this run created when it holds only what the run's setup wrote, and
    the parents it created up to `top`, when they are empty."""
    if not run.root.is_dir():
        return
    if not all(p.name in _SETUP or p.name.endswith(".tmp") for p in run.root.iterdir()):
        return
    shutil.rmtree(run.root, ignore_errors=True)
    folder = run.root.absolute().parent
    while folder != top.parent and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
