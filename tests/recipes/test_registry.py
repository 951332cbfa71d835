"""The recipe registry (`kzoo.recipes.registry`) against the code and the files it describes.

Every registered recipe's module imports and has `main`; every module of kzoo/recipes with a
`main` is registered; every shipped YAML belongs to exactly one recipe and every registered
config exists; `kzoo ls` prints exactly the table; and the `config.yaml` a run writes is headed
by the `kzoo` command of its own recipe, which the CLI accepts.
"""

import ast
import importlib
import inspect
import shlex

import pytest

from kzoo.cli.configs import resolve_config_args
from kzoo.cli.main import main
from kzoo.recipes import CONFIGS_DIR, list_recipes, load_recipe
from kzoo.recipes.registry import RECIPES, get_recipe, recipe_of_config, recipes
from kzoo.training.config import rerun_header, save_config
from tests.helpers import ROOT, one_error_line

RECIPE_DIR = ROOT / "kzoo" / "recipes"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.command)
def test_each_registered_module_imports_with_its_entry_point(recipe):
    module = importlib.import_module(recipe.module)
    assert callable(module.main) and list(inspect.signature(module.main).parameters) == ["argv"]
    assert recipe.command == recipe.name.replace("_", "-")  # `kzoo X` runs kzoo.recipes.X
    first_line = (module.__doc__ or "").strip().splitlines()[0]
    assert recipe.summary == first_line, f"{recipe.module}: the registry's summary has drifted"


def test_every_recipe_module_is_registered():
    with_main = set()
    for path in RECIPE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not path.stem.startswith("_") and any(
                isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            with_main.add(f"kzoo.recipes.{path.stem}")
    assert with_main == {recipe.module for recipe in RECIPES}
    assert len(recipes()) == len(RECIPES), "a command registered twice"
    assert list(list_recipes()) == sorted(recipe.name for recipe in RECIPES)


def test_every_shipped_yaml_belongs_to_exactly_one_recipe():
    files = {f"{p.parent.name}/{p.stem}" for p in CONFIGS_DIR.glob("*/*.yaml")}
    registered = [name for recipe in RECIPES for name in recipe.configs]
    assert len(registered) == len(set(registered)), "a config registered under two recipes"
    assert set(registered) == files, (set(registered) ^ files)
    assert not list(CONFIGS_DIR.glob("**/*.yml")) and not list(CONFIGS_DIR.glob("*/*/*.yaml"))


def test_each_shipped_yaml_names_the_command_it_is_registered_under():
    # The shipped files' own `# or: kzoo COMMAND --config NAME` line must agree with the table.
    for recipe in RECIPES:
        for name in recipe.configs:
            second = (CONFIGS_DIR / f"{name}.yaml").read_text().splitlines()[1]
            assert second.startswith(f"# or: kzoo {recipe.command} --config {name}"), name


def test_ls_prints_exactly_the_registry(capsys):
    assert main(["ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["COMMAND", "CONFIG"]
    expected = [[r.command, name] for r in RECIPES for name in r.configs or ("-",)]
    assert [line.split() for line in lines[1:]] == expected
    assert main(["ls", "--recipe", "feedback_loop"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["feedback-loop  gpt/nano_arithmetic_dpo"]


def test_unknown_names_get_one_line_with_the_close_ones(capsys, tmp_path):
    assert main(["ls", "--recipe", "pretrian"]) == 2
    assert "did you mean pretrain?" in one_error_line(capsys)
    assert main(["cp", "gpt/nano_pydoc_pretrain", str(tmp_path / "x.yaml")]) == 2
    assert "did you mean gpt/nano_pydocs_pretrain" in one_error_line(capsys)
    assert not (tmp_path / "x.yaml").exists()
    with pytest.raises(ValueError, match=r"unknown recipe 'nope'; the recipes: dpo, export-hf"):
        load_recipe("nope")


def test_a_config_of_another_recipe_is_refused_by_name(capsys):
    assert main(["sft", "--config", "gpt/nano_pydocs_pretrain"]) == 2
    assert "a config of `kzoo pretrain`, not of `kzoo sft`" in one_error_line(capsys)
    assert recipe_of_config("gpt/nano_pydocs_pretrain") is get_recipe("pretrain")
    assert recipe_of_config("gpt/nope") is None


def _header_commands():
    """(file, line, first argument) of every `rerun_header(...)` call in kzoo/."""
    found = []
    for path in sorted((ROOT / "kzoo").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "rerun_header":
                found.append((path.relative_to(ROOT).as_posix(), node.lineno, node.args[0]))
    return found


def test_every_saved_config_is_headed_by_its_own_kzoo_command():
    calls = _header_commands()
    own = {f"kzoo/recipes/{r.name}.py": r.command for r in RECIPES}
    own["kzoo/training/pretrain.py"] = "pretrain"  # `kzoo pretrain`'s training loop
    written_by = set()
    for where, line, argument in calls:
        if where == "kzoo/recipes/_online.py":  # the command is the algorithm run_online got
            assert isinstance(argument, ast.Name) and argument.id == "command", (where, line)
            continue
        assert isinstance(argument, ast.Constant), f"{where}:{line}: name the command"
        assert own.get(where) == argument.value, f"{where}:{line}: {argument.value!r}"
        written_by.add(argument.value)
    for command in ("grpo", "rloo"):  # they pass their command on to _online
        source = (RECIPE_DIR / f"{command}.py").read_text()
        assert f'run_online(config, "{command}")' in source
        written_by.add(command)
    assert written_by == {"dpo", "feedback-loop", "grpo", "kto", "orpo", "pretrain", "reward",
                          "rloo", "sft"}
    for path in (ROOT / "kzoo").rglob("*.py"):
        assert "<this file>" not in path.read_text(), f"{path}: a header the CLI cannot run"


def test_the_header_of_a_saved_config_is_a_command_the_cli_accepts(tmp_path):
    from kzoo.training import PretrainConfig, load_config

    config = load_config(CONFIGS_DIR / "gpt" / "nano_pydocs_pretrain.yaml", PretrainConfig)
    path = tmp_path / "run folder" / "config.yaml"  # a space: the header must quote it
    path.parent.mkdir()
    save_config(config, path, header=rerun_header("pretrain", path))
    first = path.read_text().splitlines()[0]
    assert first.startswith("# kzoo pretrain --config '")
    argv = shlex.split(first.removeprefix("# "))
    assert argv[:3] == ["kzoo", "pretrain", "--config"] and argv[1] in recipes()
    assert resolve_config_args(argv[2:], argv[1]) == ["--config", str(path)]
    assert load_config(argv[3], PretrainConfig) == config  # the saved config loads back
