"""Writing a run folder's files: the error a run-folder problem raises, and atomic JSON writes.

`kzoo.training.run_folder` (the folder, its marker and lock) and `kzoo.training.checkpoints`
(the verified checkpoints inside it) both raise `RunFolderError` and turn a full disk into one
line; this module holds those pieces so that neither of the two imports the other back (the
run folder asks the checkpoints whether it holds one). Nothing here imports beyond the
standard library.

Example:
```python
from pathlib import Path
from kzoo.training.folder_io import write_json_atomic
write_json_atomic(Path("runs/x/state.json"), {"step": 3})   # RunFolderError when the disk is full
```
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

__all__ = ["RunFolderError", "write_error", "write_json_atomic"]


class RunFolderError(ValueError):
    """A run folder that this run must not use (another run's, locked, damaged, full)."""


def write_json_atomic(path: Path, data) -> None:
    """Write `data` as JSON to `path` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(path, error) from None


def write_error(path: Path, error: OSError) -> Exception:
    """A one-line error for a failed write: disk full names the folder, others pass through."""
    # h5py reports a full disk in its message only ("errno = 28").
    if error.errno == errno.ENOSPC or "errno = 28" in str(error) or "No space left" in str(error):
        return RunFolderError(f"no space left on the device holding {path.parent} while "
                              f"writing {path.name}; free space there and rerun to resume")
    return error
