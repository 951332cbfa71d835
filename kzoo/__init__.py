"""kzoo: a Keras 3 model zoo for language models you can train, align and understand.

Example:
```python
import kzoo
model = kzoo.models.CausalLM.from_preset("gpt_nano", vocab_size=256)
```
"""

import importlib
import sys
from pathlib import Path

from kzoo._quiet import import_tensorflow_quietly
from kzoo.version import __version__

__all__ = ["generation", "layers", "models", "samplers", "__version__"]
_LIBRARY = ("generation", "layers", "models", "samplers")


def _is_kzoo_command() -> bool:
    """True in the process of the `kzoo` command (its console script or `python -m kzoo.cli`):
    `kzoo --help`, `kzoo ls` and `kzoo cp` must not pay for importing TensorFlow; the command
    imports the library itself before a subcommand that needs it."""
    argv = getattr(sys, "orig_argv", [])
    script = Path(argv[1]).name if len(argv) > 1 else ""
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    # `python -m kzoo.cli.rate` too: `--candidates` needs no model, so no TensorFlow either.
    return script in ("kzoo", "kzoo.exe") or module in ("kzoo.cli", "kzoo.cli.main",
                                                        "kzoo.cli.rate")


def __getattr__(name):
    if name in _LIBRARY:  # the command's process: imported on first use
        import_tensorflow_quietly()
        return importlib.import_module(f"kzoo.{name}")
    raise AttributeError(f"module 'kzoo' has no attribute {name!r}")


if not _is_kzoo_command():
    # Everywhere else at once: `import kzoo` registers the layers and models with Keras, so
    # `keras.models.load_model(path)` finds them.
    import_tensorflow_quietly()  # before Keras imports it
    from kzoo import generation, layers, models, samplers  # noqa: E402, F401
