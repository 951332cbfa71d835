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
