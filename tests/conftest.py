"""Shared test setup: backend, quiet logs, and the team's shared data files."""

import os
import subprocess
import uuid
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: PyTorch's OpenMP threads spin-wait for a core the other worker
    # holds, and a step gets 10-20x slower (nanoGPT's baby step: 539 ms with 2 threads, 38 ms
    # with 1, on a busy 2-core machine). Set before torch loads; child processes inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _session_environment() -> None:
    """Once per pytest session (in the xdist controller, before any worker or child starts, so
    all inherit it; KZOO_TEST_FAST_COMPILE=0 turns it off).

    - XLA's backend (LLVM) optimisation level 0: the suite compiles thousands of tiny programs
      (TF jit_compile, JAX) that each run a few times, so the optimiser costs more than it saves
      (`make test`'s JAX run 559 -> 415 CPU s, tests/interop on TF 91 -> 80). The HLO passes
      are unchanged, and the tight-tolerance suites (interop, cross-backend, sharding, alignment
      across backends) pass under it. The benchmarks never run under pytest: they do not get it.
    - One JAX persistent compilation cache folder for the session (KZOO_TEST_JAX_CACHE, read by
      `tests.helpers.jax_cache_env`): the JAX child processes of both workers (sharding,
      cross-backend, alignment) compile the same single-device programs; a cached executable is
      the same executable, so the same numbers. Removed when the session ends. Not for the
      JAX workers themselves (`make test`'s JAX run): measured, it saved nothing there (the
      in-memory cache already hits, and every write costs).
    """
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("KZOO_TEST_FAST_COMPILE") == "0":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    if not os.environ.get("KZOO_TEST_JAX_CACHE"):
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="kzoo-jax-cache-session-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["KZOO_TEST_JAX_CACHE"] = folder


_session_environment()

import pytest  # noqa: E402

if os.environ["KERAS_BACKEND"] == "torch":
    # The tests read results with `np.asarray(model(x))`; a torch tensor that requires grad
    # refuses `__array__`. Reading a value is not part of what is tested: detach first.
    import torch  # noqa: E402

    _array = torch.Tensor.__array__

    def _readable(self, *args, **kwargs):  # numpy has no bfloat16: float32 holds it exactly
        value = self.detach()
        return _array(value.float() if value.dtype == torch.bfloat16 else value, *args, **kwargs)

    torch.Tensor.__array__ = _readable

# One headless Chromium (Playwright) for the whole session: a session fixture imported into two
# test modules would be two, and a second sync Playwright in the same thread fails.
from tests.browser import browser  # noqa: E402, F401


def shared_data_file(name: str) -> Path:
    """Return `$KZOO_TEST_DATA/name`.

    Skips the calling test only when `KZOO_TEST_DATA` is unset; fails it when the variable is
    set but the file is missing, so CI can never silently skip the integration tests.
    """
    root = os.environ.get("KZOO_TEST_DATA")
    if not root:
        pytest.skip("KZOO_TEST_DATA is unset; set it to ../shared/data to run this test")
    path = Path(root) / name
    if not path.is_file():
        pytest.fail(f"KZOO_TEST_DATA={root!r} is set but {path} does not exist")
    return path


@pytest.fixture
def shakespeare_path() -> Path:
    return shared_data_file("tinyshakespeare.txt")


@pytest.fixture
def instruction_data_path() -> Path:
    return shared_data_file("instruction-data.json")


@pytest.fixture
def preference_data_path() -> Path:
    return shared_data_file("instruction-preference.json")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 6 MiB tmpfs (root only): a real full disk (checkpoints, prepared folders)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


# The files that take longest (the last CI's `--durations` and single-file runs on 2 cores,
# module fixtures and child processes included), slowest first. With `--dist loadfile` a file
# runs whole on one worker, and xdist by default sends the files with the most tests first, which
# left one-test files of 30-50 s (the wheel, the kill -9 recipes) for the end while the other
# worker idled. Longest first (a new slow file belongs here), the rest by test count after.
SLOW_FILES = (
    "tests/backends/test_cross_backend.py",
    "tests/training/test_sharding.py",
    "tests/training/test_sharding_dpo.py",
    "tests/alignment/test_preference_steps_backends.py",
    "tests/training/test_sharding_pretrain.py",
    "tests/recipes/test_pretrain_recipe.py",
    "tests/docs/test_code_blocks.py",
    "tests/alignment/test_online_backends.py",
    "tests/training/test_sharding_features.py",
    "tests/training/test_backends.py",
    "tests/interop/test_family_features.py",
    "tests/training/test_sharding_processes.py",
    "tests/training/test_sharding_resume.py",
    "tests/training/test_sharding_orbax.py",
    "tests/serve/test_command.py",
    "tests/alignment/test_train_step_backends.py",
    "tests/models/test_lora.py",
    "tests/cli/test_wheel.py",
    "tests/recipes/test_pretrain_prepared.py",
    "tests/cli/test_cli.py",
    "tests/generation/test_generate_dtypes.py",
    "tests/eval/test_cli.py",
    "tests/training/test_run_folder.py",
)


def pytest_configure(config):
    # Keep the order below: xdist would re-sort the files by their number of tests.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    def path_of(item):
        return item.nodeid.split("::", 1)[0]

    counts = {}
    for item in items:
        counts[path_of(item)] = counts.get(path_of(item), 0) + 1
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    # Stable: the tests of one file keep their order.
    items.sort(key=lambda item: (rank.get(path_of(item), len(rank)), -counts[path_of(item)],
                                 path_of(item)))
