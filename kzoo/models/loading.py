"""One loader for the `.keras` model files a user names (`model.init_from`, a run folder's
model): Keras safe mode (no code from the file runs), and every way the file can be wrong --
missing, truncated, corrupt, naming a class that does not exist, holding another kind of model --
becomes a one-line `ValueError` that names the file.

Example:
```python
from kzoo.models.loading import load_model_file
model = load_model_file("runs/gpt_nano_pydocs/model.keras", compile=False)
```
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

_UNKNOWN_CLASS = re.compile(r"Could not locate (?:class|function) '([^']+)'")


def _first_sentence(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_archive(path: Path) -> None:
    """Refuse a file that is not a complete `.keras` zip with a readable config.json."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, EOFError):
        raise ValueError(f"{path} is truncated or is not a .keras file (not a complete zip "
                         "archive); save it again with model.save()") from None
    except KeyError:
        raise ValueError(f"{path} is not a Keras model file: it holds no config.json") from None
    except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: its config.json is not valid JSON ({error})") from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error})") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"{path} is not a Keras model file: its config.json names no class")


def load_model_file(path: str | os.PathLike, compile: bool = True, expect: type | None = None):
    """Load the `.keras` model at `path` in Keras safe mode.

    Args:
        path: str | PathLike. a `.keras` file written by `model.save(...)`.
        compile: bool. also restore the saved `compile()` settings (as `keras.models.load_model`).
        expect: type or None. the class the model must be, e.g. `CausalLM`; None: any model.

    Returns:
        keras.Model. the loaded model.

    Raises:
        ValueError: one line naming the file: missing, not `.keras`, truncated or corrupt, a
            class that is not registered (`kzoo` registers its own on import), or a model of
            another class than `expect`.

    Example:
    ```python
    from kzoo.models import CausalLM
    from kzoo.models.loading import load_model_file
    model = load_model_file("runs/x/model.keras", expect=CausalLM)
    ```
    """
    import keras

    import kzoo  # noqa: F401  (registers the kzoo classes for deserialization)

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist" if not path.exists()
                         else f"model file {path} is not a file")
    if path.suffix != ".keras":
        raise ValueError(f"{path}: expected a .keras model file (written by model.save), got "
                         f"suffix {path.suffix!r}")
    _check_archive(path)
    try:
        model = keras.models.load_model(path, compile=compile, safe_mode=True)
    except (MemoryError, RecursionError):
        raise
    except Exception as error:  # Keras raises TypeError, ValueError, KeyError, OSError, ...
        unknown = _UNKNOWN_CLASS.search(str(error))
        if unknown:
            raise ValueError(
                f"{path} names a class that does not exist here: {unknown.group(1)!r} (not a "
                "kzoo or Keras class, or one whose package is not imported)") from None
        raise ValueError(f"{path} could not be loaded as a Keras model: "
                         f"{_first_sentence(error)}") from None
    if expect is not None and not isinstance(model, expect):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a {expect.__name__}")
    return model
