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
