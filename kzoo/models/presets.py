"""Named model recipes: flat `CausalLM` arguments for each family and size.

A preset is plain data, so it can be read, printed, diffed and overridden key by key. Each
family module (`kzoo.models.families`) holds its own presets; `PRESETS` gathers them in the
registry's order.
"""

import copy

from kzoo.models.families import list_families

PRESETS: dict[str, dict] = {name: preset for family in list_families()
                            for name, preset in family.presets.items()}


def list_presets() -> dict[str, str]:
    """Preset names with a one-line description each.

    Example:
    ```python
    from kzoo.models import list_presets
    for name, description in list_presets().items():
        print(name, "-", description)
    ```
    """
    return {name: preset["description"] for name, preset in PRESETS.items()}


def get_preset(name: str) -> dict:
    """The `CausalLM` arguments of preset `name` (a copy, without its description)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset: {name!r}. Valid presets: {sorted(PRESETS)}")
    args = copy.deepcopy(PRESETS[name])
    args.pop("description")
    return args
