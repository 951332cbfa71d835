"""Import TensorFlow without the C++ start-up lines it prints even when asked to be quiet.

TensorFlow 2.21 writes "All log messages before absl::InitializeLog() ..." and two INFO lines
straight to file descriptor 2 on import, whatever `TF_CPP_MIN_LOG_LEVEL` says. When that
variable asks for quiet (>= 1, as the recipes set it) and the Keras backend is TensorFlow,
the import runs with descriptor 2 pointed at /dev/null, so a recipe's stderr holds its own
messages only. Python-level errors are raised after the descriptor is restored.
"""

import importlib.util
import os
import sys


def import_tensorflow_quietly() -> None:
    """Import TensorFlow now, with its native start-up lines muted if asked for."""
    if "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    try:
        quiet = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0) >= 1
    except ValueError:
        quiet = False
    if not quiet or importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
