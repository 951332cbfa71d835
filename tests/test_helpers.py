"""`tests.helpers.run_backend_children` (the one way the test files start backend children) and
the comparisons with TensorFlow the backend tests share.

The children here are plain Python (no Keras import), so these run in a second or two."""

import os

import pytest

from tests.helpers import ROOT, jax_cache_env, run_backend_children, start_backend_children

ECHO = ("import json, os, sys; print('noise'); print('R ' + json.dumps({k: os.environ.get(k) "
        "for k in ('KERAS_BACKEND', 'TF_CPP_MIN_LOG_LEVEL', 'PYTHONPATH', 'KZOO_X', "
        "'JAX_COMPILATION_CACHE_DIR')} | "
        "{'argv': sys.argv[1:], 'cwd': os.getcwd()}))")


def test_each_child_gets_its_backend_arguments_and_environment(monkeypatch):
    monkeypatch.setenv("KZOO_X", "from the parent")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("KZOO_TEST_JAX_CACHE", raising=False)
    kids = run_backend_children(lambda label: ["-c", ECHO, label],
                                {"jax": "jax", "two": "jax", "torch": "torch"},
                                env=lambda label: {"KZOO_X": None} if label == "two" else {})
    assert list(kids) == ["jax", "two", "torch"]
    for label, backend in (("jax", "jax"), ("two", "jax"), ("torch", "torch")):
        seen = kids[label].json("R ")
        assert seen["KERAS_BACKEND"] == backend and seen["TF_CPP_MIN_LOG_LEVEL"] == "3"
        assert seen["PYTHONPATH"].split(":") == [str(ROOT), "/elsewhere"]
        assert seen["argv"] == [label] and seen["cwd"] == str(ROOT)
        assert seen["KZOO_X"] == (None if label == "two" else "from the parent")
        assert (seen["JAX_COMPILATION_CACHE_DIR"] is not None) == (backend == "jax")
    assert kids["jax"].json("R ")["JAX_COMPILATION_CACHE_DIR"] == jax_cache_env()[
        "JAX_COMPILATION_CACHE_DIR"]


def test_jax_children_share_the_compilation_cache(tmp_path, monkeypatch):
    pytest.importorskip("jax")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("KZOO_TEST_JAX_CACHE", str(tmp_path))
    script = "import jax, jax.numpy as jnp; print(jax.jit(lambda x: x * 2 + 1)(jnp.ones(3)))"
    child = run_backend_children(["-c", script], ("jax",))["jax"].check()
    assert "[3. 3. 3.]" in child.stdout
    assert any(tmp_path.iterdir())  # the compiled program was written for the next child


def test_children_run_at_the_same_time(tmp_path):
    # Each child writes its file, then waits for the other's: one after the other, the first
    # would wait out its 60 s and exit 1.
    wait = ("import pathlib, sys, time; d = pathlib.Path(sys.argv[1]); "
            "(d / sys.argv[2]).touch(); end = time.time() + 60\n"
            "while len(list(d.iterdir())) < 2 and time.time() < end: time.sleep(0.05)\n"
            "sys.exit(0 if len(list(d.iterdir())) == 2 else 1)")
    kids = run_backend_children(lambda b: ["-c", wait, tmp_path, b], timeout_s=90)
    assert all(k.ok for k in kids.values()), kids
    assert max(k.seconds for k in kids.values()) < 60


def test_a_failed_child_fails_the_test_with_its_stderr_tail():
    script = ("import sys; sys.stderr.write('x' * 1_000_000 + 'the last words'); "
              "sys.exit(3)")  # 1 MB: more than a pipe holds
    child = run_backend_children(["-c", script], ("torch",))["torch"]
    assert not child.ok and child.returncode == 3 and len(child.stderr) > 1_000_000
    message = child.failure()
    assert message.startswith("the KERAS_BACKEND=torch child exited with code 3")
    assert message.endswith("the last words") and len(message) < 4200
    with pytest.raises(pytest.fail.Exception, match="exited with code 3"):
        child.check()


def test_a_child_past_the_timeout_is_killed():
    child = run_backend_children(["-c", "import time; time.sleep(60)"], ("jax",),
                                 timeout_s=1)["jax"]
    assert child.timed_out and child.returncode is None and child.seconds < 30
    assert "KERAS_BACKEND=jax child timed out after 1 s" in child.failure()


def test_leaving_the_block_early_kills_the_children():
    with pytest.raises(RuntimeError, match="parent failed"):
        with start_backend_children(["-c", "import time; time.sleep(60)"]) as kids:
            raise RuntimeError("parent failed")
    results = kids.wait()
    assert all(r.returncode is not None and r.returncode < 0 for r in results.values())
    assert all(r.seconds < 30 for r in results.values())


def test_a_script_runs_here_as_its_child_would():
    import keras

    from tests.helpers import run_script_here

    # On this process's backend: in this process (its id), argv and stdout as a child's.
    script = "import os, sys; print('noise'); print('R', sys.argv[1:], os.getpid())"
    here = run_script_here(script, ["a", 2], backend=keras.backend.backend()).check()
    assert here.stdout.splitlines() == ["noise", f"R ['a', '2'] {os.getpid()}"]
    assert here.label == here.backend == keras.backend.backend()
    failed = run_script_here("import sys; print('x'); sys.exit(3)",
                             backend=keras.backend.backend())
    assert failed.returncode == 3 and failed.stdout == "x\n"
    raised = run_script_here("raise KeyError('the last words')", backend=keras.backend.backend())
    assert raised.returncode == 1 and "KeyError: 'the last words'" in raised.stderr
    with pytest.raises(pytest.fail.Exception, match="exited with code 1"):
        raised.check()
    # On another backend: a child.
    other = next(b for b in ("torch", "jax") if b != keras.backend.backend())
    child = run_script_here("import os; print(os.getpid())", backend=other).check()
    assert child.backend == other and int(child.stdout) != os.getpid()


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match=r"backends must name at least one of \['tensorflow', "
                                         r"'jax', 'torch'\], got \('numpy',\)"):
        run_backend_children(["-c", "0"], ("numpy",))
    with pytest.raises(ValueError, match="timeout_s must be > 0 seconds, got 0"):
        run_backend_children(["-c", "0"], timeout_s=0)


def test_assert_logs_close_holds_to_float32_and_fails_beyond():
    import numpy as np

    from tests.helpers import assert_logs_close

    expected = {"loss": 0.5, "kl": 1e-7, "seconds/step": 3.0}
    close = {"loss": float(np.float32(0.5) * (1 + 4e-6)), "kl": 5e-7, "seconds/step": 9.0}
    assert_logs_close(close, expected, skip=("seconds/",))
    with pytest.raises(AssertionError, match="seconds/step"):
        assert_logs_close(close, expected)  # timings compared unless skipped
    with pytest.raises(AssertionError, match="loss"):
        assert_logs_close({**close, "loss": 0.5 * (1 + 2e-5)}, expected, skip=("seconds/",))
    with pytest.raises(AssertionError, match="extra"):
        assert_logs_close({**close, "extra": 0.0}, expected, skip=("seconds/",))


def test_assert_weights_close_wants_a_moved_step_and_equal_weights():
    import numpy as np

    from tests.helpers import assert_weights_close

    start = [np.zeros((2, 3), "float32")]
    expected = [start[0] + 0.01]
    assert_weights_close([expected[0] + 5e-6], expected, start, moved_more_than=1e-3)
    with pytest.raises(AssertionError, match="moved by 0.01 at most"):
        assert_weights_close(expected, expected, start, moved_more_than=0.1)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_weights_close([expected[0] + 2e-5], expected, start, moved_more_than=1e-3)
    with pytest.raises(AssertionError):
        assert_weights_close([], [], [], moved_more_than=0.0)  # nothing to compare
