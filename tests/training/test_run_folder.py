"""Run folders: ownership, one process at a time (real processes), stale locks, cleanup."""

import json
import os
import signal
import subprocess
import sys

import pytest

from kzoo.training.run_folder import RunFolderError, open_run

HOLD = """
import sys, time
from kzoo.training.run_folder import open_run
with open_run(sys.argv[1], "sft"):
    print("locked", flush=True)
    time.sleep(120)
"""


def hold_lock(folder):
    """A second Python process that takes the lock on `folder` and sleeps."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    line = proc.stdout.readline()
    assert line.strip() == "locked", proc.stderr.read()
    return proc


def test_a_second_process_is_refused_with_the_holders_details(tmp_path):
    folder = tmp_path / "run"
    holder = hold_lock(folder)
    try:
        lock = json.loads((folder / "run.lock").read_text())
        assert lock["pid"] == holder.pid and lock["host"] and lock["started"]
        with pytest.raises(RunFolderError, match=rf"in use by another kzoo process \(pid "
                                                 rf"{holder.pid} on .*, started "):
            with open_run(folder, "sft"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert folder.is_dir()  # the refused process removed nothing


def test_a_lock_left_by_a_killed_process_is_reported_and_taken_over(tmp_path, capsys):
    folder = tmp_path / "run"
    holder = hold_lock(folder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (folder / "run.lock").is_file()  # kill -9: nothing cleaned up
    with open_run(folder, "sft") as run:
        assert json.loads(run.lock.read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"was left by a process that is gone (pid {holder.pid}" in err
    assert not (folder / "run.lock").exists()  # released on exit


def test_a_folder_that_is_not_a_kzoo_run_is_refused_and_untouched(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    with pytest.raises(RunFolderError, match="not empty and is not a kzoo run folder"):
        with open_run(folder, "pretrain"):
            pass
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_another_recipes_folder_is_refused(tmp_path):
    with open_run(tmp_path / "run", "pretrain") as run:
        (run.root / "metrics.csv").write_text("step,loss\n10,2.0\n")
    with pytest.raises(RunFolderError, match="holds a kzoo pretrain run, not a dpo run"):
        with open_run(tmp_path / "run", "dpo"):
            pass
    assert (tmp_path / "run/metrics.csv").read_text() == "step,loss\n10,2.0\n"


def test_a_finished_run_is_not_started_again(tmp_path):
    with open_run(tmp_path / "run", "sft") as run:
        (run.root / "model.keras").write_text("the model")
        run.mark("sft", "finished")
    with pytest.raises(RunFolderError, match="already holds a finished sft run"):
        with open_run(tmp_path / "run", "sft", resumable=False):
            pass
    assert (tmp_path / "run/model.keras").read_text() == "the model"


def test_a_failed_start_leaves_no_folder_behind(tmp_path):
    with pytest.raises(ValueError, match="bad data"):
        with open_run(tmp_path / "new", "sft") as run:
            (run.root / "config.yaml").write_text("x: 1")
            raise ValueError("bad data")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError), open_run(tmp_path / "a/b/run", "sft"):
        raise ValueError("bad data")
    assert not (tmp_path / "a").exists()  # nor the parents it made
    # ...but a folder that already existed keeps what it had.
    (tmp_path / "old").mkdir()
    with pytest.raises(ValueError), open_run(tmp_path / "old", "sft"):
        raise ValueError("bad data")
    assert (tmp_path / "old").is_dir()


def test_lock_contention_between_many_processes_admits_exactly_one(tmp_path):
    folder = tmp_path / "run"
    # One interpreter pays for importing kzoo (TensorFlow with it) once, then forks four
    # processes that race for the lock at the same instant. No TensorFlow op runs before or
    # after the forks (TensorFlow's thread pools do not survive one); the children only take
    # the flock, each with its own pid and its own open file.
    code = """
import os, sys, time
from kzoo.training.run_folder import RunFolderError, open_run
start = time.time() + 2.0  # after every fork
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        time.sleep(max(0.0, start - time.time()))
        try:
            with open_run(sys.argv[1], "sft"):
                os.write(1, b"won\\n")  # one write: the four share one pipe
                time.sleep(3)
        except RunFolderError:
            os.write(1, b"refused\\n")
        os._exit(0)
    children.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
print("exit codes", *codes, flush=True)
"""
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                          text=True, timeout=120,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-3000:]
    *outcomes, codes = done.stdout.strip().splitlines()
    assert codes == "exit codes 0 0 0 0", done.stderr[-3000:]
    assert sorted(outcomes) == ["refused", "refused", "refused", "won"]
