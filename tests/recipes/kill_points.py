"""kill -9 a recipe's subprocess at a chosen moment, and prove it was that moment.

Polling the run folder and then killing leaves a race (the child moves on between the look
and the kill), and a folder left by an earlier killed attempt looks like one being written
now. So the child is frozen first (SIGSTOP, waited for), the folder is checked while nothing
in it can move, and only then killed; a checkpoint folder counts only if it is not the one
(same inode and mtime) that was there at launch.

Example:

```python
before = entries(run / "backup")
proc = subprocess.Popen(command)
kill = kill_mid_checkpoint(proc, run / "backup", before, step=20, interval=10)
assert_killed_mid_checkpoint(run / "backup", before, kill)
```
"""

import os
import signal
import time
from pathlib import Path


def entries(folder) -> dict:
    """{name: (inode, mtime_ns)} of what `folder` holds now ({} when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {e.name: (e.inode(), e.stat().st_mtime_ns) for e in os.scandir(folder)}


def freeze(proc) -> bool:
    """SIGSTOP `proc` and wait until it is stopped; False when it ended first (then reaped
    here, with `proc.returncode` set)."""
    try:
        os.kill(proc.pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        return True
    proc.returncode = os.waitstatus_to_exitcode(status)
    return False


def kill_when(proc, moment, timeout: float = 240.0) -> float | None:
    """kill -9 `proc` once `moment()` holds while it is frozen (so it held at the kill).

    Args:
        proc: subprocess.Popen. the run.
        moment: callable () -> bool. looks at the run folder; cheap (it runs every ms).
        timeout: float. seconds to wait for the moment.

    Returns:
        float. seconds from the call to the kill; None when `proc` ended before the moment
        came (or the time ran out: then it is killed all the same).
    """
    start = time.monotonic()
    while time.monotonic() < start + timeout and proc.poll() is None:
        if moment() and freeze(proc):
            if moment():  # frozen: nothing it checks can change until SIGCONT or SIGKILL
                proc.kill()
                proc.wait()
                return time.monotonic() - start
            os.kill(proc.pid, signal.SIGCONT)  # it moved on between the look and the freeze
        time.sleep(0.001)  # a tiny model's checkpoint is written in some 10 ms
    if proc.poll() is None:  # timed out: leave no run behind (it holds the folder's lock)
        proc.kill()
        proc.wait()
    return None


def kill_mid_checkpoint(proc, backup, before: dict, step: int, interval: int) -> dict | None:
    """kill -9 `proc` while it writes its own `step-NNNNNNN.tmp/` for `step`, or for a later
    step when that one was sealed before the child could be frozen (a loaded machine).

    Args:
        proc: subprocess.Popen. the run, launched after `before` was taken.
        backup: Path. the run's `backup/` folder.
        before: dict. `entries(backup)` taken just before launch.
        step: int. the checkpoint to kill in; `interval`: int. the steps between two.

    Returns:
        {"tmp", "step", "after_s"} of the kill, or None when `proc` ended first.
    """
    backup, target = Path(backup), {"step": step}

    def writing():
        name = f"step-{target['step']:07d}.tmp"
        if _sealed(backup, name):  # missed: the next one
            target["step"] += interval
            return False
        return _own(backup / name, before)

    after = kill_when(proc, writing)
    if after is None:
        return None
    return {"tmp": f"step-{target['step']:07d}.tmp", "step": target["step"], "after_s": after}


def assert_killed_mid_checkpoint(backup, before: dict, kill: dict) -> None:
    """After the kill, independent of how it was triggered: the folder it was killed in is
    still a `.tmp`, was made by this attempt (not there at launch), and was never sealed."""
    backup = Path(backup)
    assert kill is not None, "the run ended before it could be killed mid-checkpoint"
    assert _own(backup / kill["tmp"], before), f"{kill}: stale or missing, not this attempt's"
    assert not _sealed(backup, kill["tmp"]), f"{kill}: the checkpoint was complete"


def _own(path: Path, before: dict) -> bool:
    # Same inode and mtime as at launch: an earlier attempt's folder, untouched by this one.
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return (st.st_ino, st.st_mtime_ns) != before.get(path.name)


def _sealed(backup: Path, tmp: str) -> bool:
    final = tmp.removesuffix(".tmp")
    latest = backup / "LATEST"
    return (backup / final).exists() or (latest.is_file() and latest.read_text() == final)
