"""The recipes: one module per `kzoo` command (`kzoo.recipes.pretrain` is `kzoo pretrain`), each
with its config dataclasses, `run(...)` and `main(argv) -> int`, and the YAML configs they ship
with (`configs/<family>/<size>_<data>_<method>.yaml`, package data of the wheel).

Which modules are recipes, and which configs each ships, is the table in
`kzoo.recipes.registry` (one line a recipe); listing them imports no recipe and no TensorFlow.

Example:
```python
from kzoo.recipes import CONFIGS_DIR, list_recipes
list_recipes()["pretrain"]   # 'Pre-train a kzoo model for next-token prediction.'
sorted(CONFIGS_DIR.glob("*/*.yaml"))[0].name
```
"""

from __future__ import annotations

import importlib

from kzoo.recipes.registry import CONFIGS_DIR, RECIPES, get_recipe

__all__ = ["CONFIGS_DIR", "list_recipes", "load_recipe"]


def list_recipes() -> dict[str, str]:
    """The registered recipe modules of `kzoo.recipes`, by module name, with their summaries.

    Returns:
        dict[str, str]. module name (e.g. "feedback_loop") -> one-line summary, sorted by name.

    Example:
    ```python
    "sft" in list_recipes()   # True
    ```
    """
    return dict(sorted((recipe.name, recipe.summary) for recipe in RECIPES))


def load_recipe(name: str):
    """The recipe module `kzoo.recipes.<name>` (imported now; TensorFlow comes with it).

    Args:
        name: str. a module name of `list_recipes()` ("pretrain", "feedback_loop", ...) or its
            command ("feedback-loop").

    Raises:
        ValueError: one line naming `name` and the recipes there are.

    Example:
    ```python
    load_recipe("pretrain").main(["--help"])
    ```
    """
    return importlib.import_module(get_recipe(name).module)
