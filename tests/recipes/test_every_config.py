"""Every shipped config (the recipe registry's, `kzoo.recipes.registry.shipped_configs`): headed
by the command that runs it, named `<size>_<data>_<method>.yaml`, and one tiny step of it runs
(`tests.harness.run_recipe_test`). A config is found through the registry, never by its comment
line, so registering a config is what gets it tested.
"""

import re

import pytest

from kzoo.models import list_presets
from kzoo.recipes.registry import RECIPES, recipe_of_config, shipped_configs
from tests.harness import TINY_STEPS, run_recipe_test
from tests.helpers import ROOT

CONFIGS = shipped_configs()
HEADER = re.compile(r"# python recipes/(\w+)\.py --config (recipes/configs/\S+\.yaml)(\s|$)")


def test_every_recipe_with_configs_has_a_tiny_step():
    with_configs = {recipe.name for recipe in RECIPES if recipe.configs}
    assert {"pretrain", "sft", "dpo", "reward", "generate"} <= with_configs
    assert with_configs <= set(TINY_STEPS), "a recipe whose configs no tiny step runs"


@pytest.mark.parametrize("name", CONFIGS)
def test_header_and_name(name):
    path = CONFIGS[name]
    first = path.read_text().splitlines()[0]
    match = HEADER.match(first)
    assert match, f"{path}: first line must be '# python recipes/NAME.py --config ...'"
    assert match.group(1) == recipe_of_config(name).name, "the header names another recipe"
    assert match.group(2) == f"recipes/configs/{name}.yaml"
    assert (ROOT / "recipes" / f"{match.group(1)}.py").is_file()
    family, stem = name.split("/")
    size, *data, method = stem.split("_")
    assert data and method, f"{path.name}: expected <size>_<data>_<method>.yaml"
    assert f"{family}_{size}" in list_presets(), f"{path.name}: unknown size {size!r}"


@pytest.mark.parametrize("name", CONFIGS)
def test_one_tiny_step(name, tmp_path, request):
    run_recipe_test(name, tmp_path, request)
