"""Helpers the test files share (importable as `tests.helpers`: pytest puts the checkout on
`sys.path`, see `pythonpath` in pyproject.toml)."""

import importlib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_module(path, name: str | None = None):
    """Import the Python file at `path` as a fresh module (recipes are scripts, not a package).

    Example:
    ```python
    sft = load_module(ROOT / "recipes/sft.py")
    ```
    """
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_recipe(name: str):
    """The recipe `kzoo.recipes.<name>` (what `recipes/<name>.py` and `kzoo <name>` run)."""
    return importlib.import_module(f"kzoo.recipes.{name}")


def sets(*items):
    """`--set` arguments for a recipe's command line: `sets("a=1", "b=2")`."""
    return [a for item in items for a in ("--set", item)]


def one_error_line(capsys) -> str:
    """Assert the recipe wrote exactly one `error: ...` line on stderr (no traceback); return it."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def value_and_grads(fn, *arrays):
    """`fn(*tensors)` (a scalar) and its gradients with respect to each array, as numpy, on
    the current Keras backend: the tests of the differentiable pieces run on every backend.

    Example:
    ```python
    value, (grad,) = value_and_grads(lambda x: (x * x).sum(), np.ones(3, "float32"))
    ```
    """
    import keras
    import numpy as np
    from keras import ops

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(arrays))))(
            *[jax.numpy.asarray(a, "float32") for a in arrays])
    elif backend == "torch":
        import torch

        tensors = [torch.tensor(np.asarray(a, "float32"), requires_grad=True) for a in arrays]
        value = fn(*tensors)
        value.backward()
        grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in tensors]
    else:
        import tensorflow as tf

        variables = [tf.Variable(np.asarray(a, "float32")) for a in arrays]
        with tf.GradientTape() as tape:
            value = fn(*variables)
        grads = [g if g is not None else tf.zeros_like(v)
                 for g, v in zip(tape.gradient(value, variables), variables)]
    return float(ops.convert_to_numpy(value)), [np.asarray(ops.convert_to_numpy(g))
                                                for g in grads]



def assert_logs_close(logs: dict, expected: dict, skip: tuple = (), where=None) -> None:
    """Assert `logs` (a backend's metrics) equal `expected` (TensorFlow's): the same keys, each
    value to `rel=1e-5, abs=1e-6` (float32), keys starting with a `skip` prefix aside.

    Example:
    ```python
    assert_logs_close({"loss": 1.0000001}, {"loss": 1.0}, where="grpo")
    ```
    """
    import pytest

    assert logs.keys() == expected.keys(), (where, sorted(logs.keys() ^ expected.keys()))
    for key, value in expected.items():
        if not key.startswith(tuple(skip)):
            assert logs[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (where, key)


def assert_weights_close(weights, expected, start, moved_more_than: float) -> None:
    """Assert the `expected` (TensorFlow's) weights moved from `start` by more than
    `moved_more_than` somewhere (the step did train), and `weights` equal them to `atol=1e-5`.

    Example:
    ```python
    assert_weights_close([w + 1e-7], [w], [w - 1], moved_more_than=1e-4)
    ```
    """
    import numpy as np

    assert len(weights) == len(expected) == len(start) > 0
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(expected, start))
    assert moved > moved_more_than, f"the weights moved by {moved:.3g} at most"
    for a, b in zip(expected, weights):
        np.testing.assert_allclose(b, a, atol=1e-5)


# ------------------------------------------------------------------ backend child processes
# A JAX or PyTorch check runs in a child process (the pytest process runs on TensorFlow); each
# child pays ~15-25 s of imports and compiles, so a test file starts one child per backend that
# does all its cases, and starts them all at once.
CHILD_TIMEOUT_S = 300
_jax_cache = []


def seed_without_tensorflow(seed: int) -> None:
    """`keras.utils.set_random_seed(seed)` with its TensorFlow branch off: the same Python,
    NumPy and Keras seeds, so the same weights, without importing TensorFlow (~1.5 CPU s and
    its memory per JAX child) to seed a RNG that no JAX child uses.

    Example: `seed_without_tensorflow(0)` before building a model in a JAX child.
    """
    import types
    from unittest import mock

    import keras
    from keras.src.utils import rng_utils

    with mock.patch.object(rng_utils, "tf", types.SimpleNamespace(available=False)):
        keras.utils.set_random_seed(seed)


def jax_cache_env() -> dict:
    """The environment that gives a JAX child XLA's persistent compilation cache: most of a JAX
    child's time is compiling, and a program compiled once (same HLO, flags and devices) is
    then read back, in the same child (each `pretrain` run of one model) and in later ones.
    The results are the same executables', so the same numbers.

    The folder: $KZOO_TEST_JAX_CACHE if set (kept between sessions), else one temporary folder
    for this pytest process (each xdist worker its own), removed when it exits.

    Example:
    ```python
    env = {**os.environ, "KERAS_BACKEND": "jax", **jax_cache_env()}
    ```
    """
    import atexit
    import os
    import shutil
    import tempfile

    folder = os.environ.get("KZOO_TEST_JAX_CACHE")
    if not folder:
        if not _jax_cache:
            _jax_cache.append(tempfile.mkdtemp(prefix="kzoo-jax-cache-"))
            atexit.register(shutil.rmtree, _jax_cache[0], ignore_errors=True)
        folder = _jax_cache[0]
    # Tiny test programs compile in well under JAX's default 1 s threshold: cache them all.
    return {"JAX_COMPILATION_CACHE_DIR": folder, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


class CompletedChild:
    """What one child process left.

    Attributes:
        label: str. the name it was started under (its backend's name unless told otherwise).
        backend: str. its KERAS_BACKEND.
        returncode: int | None. its exit status; None when it was killed on the timeout.
        stdout, stderr: str. what it wrote.
        seconds: float. from its start to its end.
        timed_out: bool. killed after `limit_s` seconds.

    Example:
    ```python
    child = run_backend_children(["-c", "print(1)"])["jax"]
    child.check().stdout   # "1\\n"; `check` fails the test with the stderr tail otherwise
    ```
    """

    def __init__(self, label, backend, returncode, stdout, stderr, seconds, timed_out,
                 limit_s=None):
        self.label, self.backend, self.returncode = label, backend, returncode
        self.stdout, self.stderr, self.seconds, self.timed_out = stdout, stderr, seconds, timed_out
        self.limit_s = limit_s

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self, tail: int = 4000) -> str:
        """The message for a failed child: how it ended, then its stderr's last `tail` chars."""
        name = f"KERAS_BACKEND={self.backend}" + (
            f" ({self.label})" if self.label != self.backend else "")
        how = (f"timed out after {self.limit_s:g} s" if self.timed_out
               else f"exited with code {self.returncode}")
        return f"the {name} child {how}; its stderr ends:\n{self.stderr[-tail:]}"

    def check(self) -> "CompletedChild":
        """This child, or the test fails with `failure()` when it did not exit with 0."""
        if not self.ok:
            import pytest

            pytest.fail(self.failure(), pytrace=False)
        return self

    def json(self, prefix: str = ""):
        """The JSON on the last stdout line that starts with `prefix` (after the check)."""
        import json

        lines = [ln for ln in self.check().stdout.splitlines()
                 if ln.strip() and ln.startswith(prefix)]
        if not lines:
            import pytest

            pytest.fail(f"the {self.label} child printed no line starting with {prefix!r}:\n"
                        f"{self.stdout[-2000:]}", pytrace=False)
        return json.loads(lines[-1][len(prefix):])

    def __repr__(self):
        return (f"CompletedChild({self.label!r}, returncode={self.returncode}, "
                f"seconds={self.seconds:.1f})")


class BackendChildren:
    """Child processes started by `start_backend_children`; `wait()` collects them. As a
    context manager it kills what is still running when the block is left (the parent's own
    work raised).

    Example:
    ```python
    with start_backend_children(["-m", "tests.backends.cross_backend_checks", d, out]) as kids:
        reference = compute(d)   # TensorFlow's results, while the children run
        results = kids.wait()
    ```
    """

    def __init__(self, children, timeout_s):
        self._children, self._timeout_s = children, timeout_s
        self._results = None

    def wait(self) -> dict:
        """{label: CompletedChild}, once every child has exited or been killed: the timeout
        counts from the start, shared by all."""
        import subprocess
        import time

        if self._results is not None:
            return self._results
        results = {}
        for label, (backend, proc, out, err, began) in self._children.items():
            timed_out = False
            try:
                proc.wait(timeout=max(0.0, began + self._timeout_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                timed_out = True
            seconds = time.monotonic() - began
            texts = []
            for stream in (out, err):
                stream.seek(0)
                texts.append(stream.read().decode("utf-8", "replace"))
                stream.close()
            results[label] = CompletedChild(label, backend, None if timed_out else proc.returncode,
                                            texts[0], texts[1], seconds, timed_out,
                                            self._timeout_s)
        self._results = results
        return results

    def kill(self) -> None:
        for _, proc, *_ in self._children.values():
            if proc.poll() is None:
                proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._results is None:
            self.kill()
            self.wait()
        return False


def installed(backends) -> list:
    """The names in `backends` whose package is installed: `installed(("jax", "torch"))`."""
    return [b for b in backends if importlib.util.find_spec(b) is not None]


def _child_specs(backends) -> dict:
    """{label: backend}: `backends` is a sequence of backend names (each its own label) or a
    mapping label -> backend (two children on one backend)."""
    allowed = ("tensorflow", "jax", "torch")
    specs = dict(backends) if isinstance(backends, dict) else {b: b for b in backends}
    bad = sorted({b for b in specs.values() if b not in allowed})
    if not specs or bad:
        raise ValueError(f"backends must name at least one of {list(allowed)}, got {backends!r}")
    return specs


def start_backend_children(args_for_backend, backends=("jax", "torch"), *, env=None,
                           timeout_s: float = CHILD_TIMEOUT_S, cwd=ROOT) -> BackendChildren:
    """Start `python ARGS` once per backend, all at once, and return without waiting.

    Args:
        args_for_backend: list[str] | callable. the arguments after the interpreter (the same
            for every child), or `label -> list[str]`.
        backends: sequence[str] | dict[str, str]. backend names, or labels -> backend names.
        env: dict | callable | None. extra environment variables (or `label -> dict`); a value
            None removes the variable. KERAS_BACKEND, TF_CPP_MIN_LOG_LEVEL=3 and PYTHONPATH
            (the checkout first) are set for every child, and `jax_cache_env()` for JAX ones
            (unless the parent's environment names a JAX_COMPILATION_CACHE_DIR).
        timeout_s: float. seconds from the start before `wait` kills a child.
        cwd: Path. the children's working directory (the checkout).

    Example:
    ```python
    kids = start_backend_children(lambda b: ["-c", CHILD, str(folder / f"{b}.npz")])
    results = kids.wait()   # {"jax": CompletedChild(...), "torch": CompletedChild(...)}
    ```
    """
    import os
    import subprocess
    import sys
    import tempfile
    import time

    if not timeout_s or timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
    children = {}
    try:
        for label, backend in _child_specs(backends).items():
            args = args_for_backend(label) if callable(args_for_backend) else args_for_backend
            extra = env(label) if callable(env) else (env or {})
            child_env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                         "PYTHONPATH": os.pathsep.join(
                             [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
            if backend == "jax" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
                child_env.update(jax_cache_env())
            if extra.get("XLA_FLAGS") and os.environ.get("XLA_FLAGS"):
                # Keep the session's flags (tests/conftest.py) under the child's own, which win.
                extra = {**extra, "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} {extra['XLA_FLAGS']}"}
            child_env.update(extra)
            child_env = {k: v for k, v in child_env.items() if v is not None}
            # Files, not pipes: a child that writes more than a pipe holds while the parent
            # waits on another child would block forever.
            out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            proc = subprocess.Popen([sys.executable, *map(str, args)], env=child_env, cwd=cwd,
                                    stdout=out, stderr=err)
            children[label] = (backend, proc, out, err, time.monotonic())
    except BaseException:
        BackendChildren(children, timeout_s).__exit__()
        raise
    return BackendChildren(children, timeout_s)


def run_backend_children(args_for_backend, backends=("jax", "torch"), *, env=None,
                         timeout_s: float = CHILD_TIMEOUT_S, cwd=ROOT) -> dict:
    """`start_backend_children(...).wait()`: {label: CompletedChild} once all have ended.

    Example:
    ```python
    kids = run_backend_children(["-c", "import keras; print(keras.backend.backend())"])
    assert kids["torch"].check().stdout.strip() == "torch"
    ```
    """
    return start_backend_children(args_for_backend, backends, env=env, timeout_s=timeout_s,
                                  cwd=cwd).wait()


def run_script_here(script: str, args=(), backend: str = "tensorflow") -> CompletedChild:
    """What `python -c script *args` leaves with KERAS_BACKEND=`backend`, as a `CompletedChild`
    (label `backend`): run in this process when it runs on `backend`, else in a child.

    For the TensorFlow reference of a cross-backend check: the pytest process already runs on
    TensorFlow, and a TensorFlow child would pay ~6 CPU s of interpreter and TensorFlow imports
    for the same script. The script runs as `__main__` in a namespace of its own, with
    `sys.argv` set as the child's would be; its stdout is captured, an exception (or a
    non-zero `sys.exit`) becomes the return code and its traceback the stderr.

    Example:
    ```python
    child = run_script_here("import sys; print(sys.argv[1])", ["hello"])
    assert child.check().stdout == "hello\\n"
    ```
    """
    import contextlib
    import io
    import sys
    import time
    import traceback

    import keras

    if keras.backend.backend() != backend:
        return run_backend_children(["-c", script, *args], (backend,))[backend]
    out, err = io.StringIO(), io.StringIO()
    argv, began, code = sys.argv, time.monotonic(), 0
    sys.argv = ["-c", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(script, f"<{backend} script>", "exec"), {"__name__": "__main__"})
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if stop.code is not None and not isinstance(stop.code, int):
            err.write(f"{stop.code}\n")
    except Exception:  # the child's failure, reported by `check` as a child's would be
        code = 1
        err.write(traceback.format_exc())
    finally:
        sys.argv = argv
    return CompletedChild(backend, backend, code, out.getvalue(), err.getvalue(),
                          time.monotonic() - began, False)
