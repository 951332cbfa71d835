"""The recipes: one module per `kzoo` command (`kzoo.recipes.pretrain` is `kzoo pretrain`), each
with its config dataclasses, `run(...)` and `main(argv) -> int`, and the YAML configs they ship
with (`configs/<family>/<size>_<data>_<method>.yaml`, package data of the wheel).

A module here that defines a top-level `main` is a recipe: `list_recipes` finds it by reading
the source (nothing is imported, so listing costs no TensorFlow import), and a new module
dropped in becomes a `kzoo` command with no other edit.

Example:
```python
from kzoo.recipes import CONFIGS_DIR, list_recipes
list_recipes()["pretrain"]   # 'Pre-train a kzoo model for next-token prediction.'
sorted(CONFIGS_DIR.glob("*/*.yaml"))[0].name
```
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def _summary(path: Path) -> str | None:
    """The first docstring line of the module at `path` when it defines `main`, else None."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None  # not a readable recipe: importing it would fail the same way
    defines_main = any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                       and node.name == "main" for node in tree.body)
    if not defines_main:
        return None
    doc = ast.get_docstring(tree) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def list_recipes() -> dict[str, str]:
    """The recipe modules of `kzoo.recipes`, by module name, with their one-line summaries.

    Returns:
        dict[str, str]. module name (e.g. "feedback_loop") -> first line of its docstring,
        sorted by name; only modules with a top-level `def main`.

    Example:
    ```python
    "sft" in list_recipes()   # True
    ```
    """
    found = {}
    for info in pkgutil.iter_modules([str(Path(__file__).resolve().parent)]):
        if info.ispkg or info.name.startswith("_"):
            continue
        spec = importlib.util.find_spec(f"{__name__}.{info.name}")
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        summary = _summary(Path(spec.origin))
        if summary is not None:
            found[info.name] = summary
    return dict(sorted(found.items()))


def load_recipe(name: str):
    """The recipe module `kzoo.recipes.<name>` (imported now; TensorFlow comes with it).

    Args:
        name: str. a module name of `list_recipes()` ("pretrain", "feedback_loop", ...).

    Raises:
        ValueError: one line naming `name` and the recipes there are.

    Example:
    ```python
    load_recipe("pretrain").main(["--help"])
    ```
    """
    recipes = list_recipes()
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; the recipes are {list(recipes)}")
    return importlib.import_module(f"{__name__}.{name}")
