"""The configs shipped inside the package: `kzoo ls`, `kzoo cp`, and what `--config NAME` means.

A shipped config is named `<family>/<size>_<data>_<method>` (e.g. `gpt/nano_pydocs_pretrain`),
with or without `.yaml`; it lives at `kzoo/recipes/configs/<name>.yaml`. Which configs there
are, and which command runs each, is the recipe registry (`kzoo.recipes.registry`), not the
files' comments. Nothing here imports TensorFlow.

Example:
```python
from kzoo.cli.configs import resolve_config, shipped_configs
sorted(shipped_configs())[:1]                  # ['gpt/baby_instruction_dpo']
resolve_config("gpt/nano_pydocs_pretrain")     # '.../kzoo/recipes/configs/gpt/nano_...yaml'
```
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kzoo.recipes.registry import (
    RECIPES,
    close_configs,
    get_recipe,
    recipe_of_config,
    shipped_configs,
)

__all__ = ["cp_main", "ls_main", "resolve_config", "resolve_config_args", "shipped_configs"]


def _name(value: str) -> str:
    name = value.removesuffix(".yaml")
    return name.removeprefix("recipes/configs/")  # the documented checkout path, too


def resolve_config(value: str, command: str | None = None) -> str:
    """What `--config VALUE` names: an existing file as given, else a shipped config's path.

    Args:
        value: str. a path, or a shipped name such as `gpt/nano_pydocs_pretrain(.yaml)`.
        command: str or None. the recipe being run; a shipped name of another recipe's config
            is then refused (it would fail later on the other recipe's keys).

    Raises:
        ValueError: one line when VALUE is neither a file nor a shipped name (naming the close
            names and listing all), or is another recipe's config.

    Example:
    ```python
    resolve_config("my.yaml")   # 'my.yaml' when the file exists
    ```
    """
    if Path(value).is_file():
        return value
    configs = shipped_configs()
    name = _name(value)
    if name not in configs:
        raise ValueError(f"--config {value}: no such file, and no shipped config of that name; "
                         f"{close_configs(name)}the shipped configs (`kzoo ls`): {list(configs)}")
    owner = recipe_of_config(name)
    if command is not None and owner.command != get_recipe(command).command:
        raise ValueError(f"--config {value}: a config of `kzoo {owner.command}`, not of "
                         f"`kzoo {get_recipe(command).command}` (`kzoo ls --recipe "
                         f"{get_recipe(command).command}` lists its configs)")
    return str(configs[name])


def resolve_config_args(argv: list[str], command: str | None = None) -> list[str]:
    """`argv` with the value of every `--config X` / `--config=X` resolved (`resolve_config`).

    Args:
        argv: list[str]. a recipe's arguments.
        command: str or None. the recipe they are for (see `resolve_config`).

    Example:
    ```python
    resolve_config_args(["--config", "gpt/nano_pydocs_pretrain", "--set", "train.steps=2"])
    ```
    """
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            out += [arg, resolve_config(argv[i + 1], command)]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolve_config(arg.split("=", 1)[1], command)
        elif arg == "--":  # what follows is positional, left alone
            out += argv[i:]
            break
        out.append(arg)
        i += 1
    return out


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def ls_main(argv: list[str]) -> int:
    """`kzoo ls [--recipe NAME]`: the registered recipes, one line per shipped config.

    Each line is `COMMAND  CONFIG` under a header; a recipe that ships no config (it takes
    positional arguments) shows `-`.

    Args:
        argv: list[str]. the arguments after `ls`.

    Example:
    ```python
    ls_main(["--recipe", "feedback-loop"])   # prints feedback-loop  gpt/nano_arithmetic_dpo
    ```
    """
    parser = argparse.ArgumentParser(
        prog="kzoo ls", description="List the recipe commands and the configs shipped for "
        "each; run one with `kzoo COMMAND --config CONFIG`, copy one out with `kzoo cp`.")
    parser.add_argument("--recipe", metavar="NAME", help="only the configs of this command")
    args = parser.parse_args(argv)
    chosen = RECIPES
    if args.recipe is not None:
        try:
            chosen = (get_recipe(args.recipe),)
        except ValueError as error:
            return _error(f"--recipe {args.recipe}: {error}")
    rows = [(recipe.command, name) for recipe in chosen for name in recipe.configs or ("-",)]
    width = max(len("COMMAND"), *(len(command) for command, _ in rows))
    print(f"{'COMMAND':<{width}}  CONFIG")
    for command, name in rows:
        print(f"{command:<{width}}  {name}")
    return 0


def cp_main(argv: list[str]) -> int:
    """`kzoo cp NAME DEST`: copy a shipped config to DEST (a new file, or into a folder).

    Refuses (exit code 2, one line, nothing written) an unknown NAME (naming the close ones),
    an existing DEST file and a DEST whose folder does not exist.

    Example:
    ```python
    cp_main(["gpt/nano_pydocs_pretrain", "mine.yaml"])   # 0; prints the command that runs it
    ```
    """
    parser = argparse.ArgumentParser(
        prog="kzoo cp", description="Copy a shipped config out to edit it; then run "
        "`kzoo COMMAND --config DEST`.")
    parser.add_argument("name", help="a shipped config, e.g. gpt/nano_pydocs_pretrain")
    parser.add_argument("dest", help="a new .yaml file, or an existing folder to copy into")
    args = parser.parse_args(argv)
    configs = shipped_configs()
    name = _name(args.name)
    source = configs.get(name)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / f"{Path(name).name}.yaml"
    error = None
    if source is None:
        error = f"{args.name}: not a shipped config; {close_configs(name)}the shipped configs " \
                f"(`kzoo ls`): {list(configs)}"
    elif not dest.parent.is_dir():
        error = f"{args.dest}: the folder {dest.parent} does not exist (kzoo cp creates no folders)"
    if error is None:
        try:
            with open(dest, "x", encoding="utf-8") as f:  # "x": never over an existing file
                f.write(source.read_text(encoding="utf-8"))
        except FileExistsError:
            error = f"{dest} already exists; kzoo cp does not overwrite files"
        except OSError as failure:
            error = f"cannot write {dest}: {failure.strerror or failure}"
    if error is not None:
        return _error(error)
    print(f"copied {name} to {dest}; run it with: "
          f"kzoo {recipe_of_config(name).command} --config {dest}")
    return 0
