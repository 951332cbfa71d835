"""Import TensorFlow without the C++ start-up lines it prints even when asked to be quiet.

TensorFlow 2.21 writes "All log messages before absl::InitializeLog() ..." and two INFO lines
straight to file descriptor 2 on import, whatever `TF_CPP_MIN_LOG_LEVEL` says. When that
variable asks for quiet (>= 1, as the recipes set it), the import runs with descriptor 2
pointed at /dev/null, so a recipe's stderr holds its own messages only. Python-level errors are
raised after the descriptor is restored.

On the TensorFlow backend that happens before Keras imports it. On JAX and PyTorch TensorFlow is
imported only where it is used: the tf.data path (`tensorflow()`) and Keras' own
`set_random_seed`, which seeds TensorFlow when it is installed (`set_random_seed()` here).
"""

import contextlib
import importlib.util
import os
import sys


def import_tensorflow_quietly(any_backend: bool = False) -> None:
    """Import TensorFlow now, with its native start-up lines muted if asked for.

    Args:
        any_backend: bool. also when the Keras backend is JAX or PyTorch (False: only on the
            TensorFlow backend, where Keras imports it anyway).
    """
    on_tensorflow = os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow"
    if "tensorflow" in sys.modules or not (on_tensorflow or any_backend):
        return
    if not _quiet_asked() or importlib.util.find_spec("tensorflow") is None:
        return
    with _muted_stderr():
        import tensorflow  # noqa: F401


def _quiet_asked() -> bool:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0) >= 1
    except ValueError:
        return False


@contextlib.contextmanager
def _muted_stderr():
    """File descriptor 2 pointed at /dev/null inside the block (native code writes there
    directly, past Python's `sys.stderr`)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def probe_devices_quietly() -> None:
    """Let TensorFlow look for its devices now, with descriptor 2 muted if quiet is asked for.

    On a machine without a GPU, TensorFlow's first look for devices (the first model built or
    loaded) writes "failed call to cuInit: ... UNKNOWN ERROR (303)" at ERROR level, which
    `TF_CPP_MIN_LOG_LEVEL=2` lets through. Looking once here, muted, makes later looks silent
    (TensorFlow initialises its platforms once). Nothing happens off the TensorFlow backend or
    without TensorFlow imported.
    """
    if "tensorflow" not in sys.modules or not _quiet_asked():
        return
    import tensorflow as tf

    with _muted_stderr():
        tf.config.list_physical_devices()


def tensorflow():
    """The `tensorflow` module, imported quietly on any backend (the tf.data path).

    Example: `tf = tensorflow(); tf.data.Dataset.range(3)`.
    """
    import_tensorflow_quietly(any_backend=True)
    import tensorflow as tf

    return tf


def set_random_seed(seed: int) -> None:
    """`keras.utils.set_random_seed(seed)`, with the TensorFlow import it makes when TensorFlow
    is installed muted as above, on every backend.

    Example: `set_random_seed(0)` before building a model gives the same initial weights.
    """
    import keras

    import_tensorflow_quietly(any_backend=True)  # nothing when TensorFlow is not installed
    keras.utils.set_random_seed(seed)
