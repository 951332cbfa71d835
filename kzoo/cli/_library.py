"""Loading the library for a `kzoo` command that needs it, shared by the CLI's modules.

It lives apart from `kzoo.cli.main` so that `kzoo.cli.chat` and `kzoo.cli.eval`, which
`main` dispatches to, need not import `main` back (no import circle). Importing this module
imports nothing heavy; `load_library()` does.

Example:
```python
from kzoo.cli._library import load_library
load_library()   # TensorFlow (quietly), kzoo.models and kzoo.generation are now imported
```
"""

from __future__ import annotations

import os


def load_library() -> None:
    """What `import kzoo` does outside the `kzoo` command: TensorFlow imported quietly, then
    kzoo's layers and models (registered with Keras, so saved models load)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kzoo._quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import kzoo.generation  # noqa: F401
    import kzoo.models  # noqa: F401
