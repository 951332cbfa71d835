"""The configs shipped inside the package: `kzoo ls`, `kzoo cp`, and what `--config NAME` means.

A shipped config is named `<family>/<size>_<data>_<method>` (e.g. `gpt/nano_pydocs_pretrain`),
with or without `.yaml`; it lives at `kzoo/recipes/configs/<name>.yaml`. Its first comment
lines hold the command that runs it (`# or: kzoo pretrain --config gpt/nano_pydocs_pretrain`),
which is where `kzoo ls` reads the recipe it is for. Nothing here imports TensorFlow.

Example:
```python
from kzoo.cli.configs import resolve_config, shipped_configs
sorted(shipped_configs())[:1]                  # ['gpt/baby_instruction_dpo']
resolve_config("gpt/nano_pydocs_pretrain")     # '.../kzoo/recipes/configs/gpt/nano_...yaml'
```
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from kzoo.recipes import CONFIGS_DIR

_KZOO_HEADER = re.compile(r"#\s*(?:or:\s*)?kzoo\s+([\w-]+)")
_SCRIPT_HEADER = re.compile(r"#\s*python\s+recipes/(\w+)\.py")


def shipped_configs() -> dict[str, Path]:
    """The shipped configs: name (`family/stem`) -> path, sorted by name.

    Example:
    ```python
    shipped_configs()["gpt/nano_pydocs_pretrain"].name   # 'nano_pydocs_pretrain.yaml'
    ```
    """
    return {f"{p.parent.name}/{p.stem}": p for p in sorted(CONFIGS_DIR.glob("*/*.yaml"))}


def recipe_of(path: Path) -> str | None:
    """The command a config's header runs (`pretrain`, `feedback-loop`, ...), or None.

    Args:
        path: Path. a config file; its leading `#` lines are read.

    Example:
    ```python
    recipe_of(shipped_configs()["gpt/nano_arithmetic_dpo"])   # 'feedback-loop'
    ```
    """
    script = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if match := _KZOO_HEADER.match(line):
            return match.group(1)
        if script is None and (match := _SCRIPT_HEADER.match(line)):
            script = match.group(1).replace("_", "-")
    return script


def _name(value: str) -> str:
    name = value.removesuffix(".yaml")
    return name.removeprefix("recipes/configs/")  # the documented checkout path, too


def resolve_config(value: str) -> str:
    """What `--config VALUE` names: an existing file as given, else a shipped config's path.

    Args:
        value: str. a path, or a shipped name such as `gpt/nano_pydocs_pretrain(.yaml)`.

    Raises:
        ValueError: one line when VALUE is neither a file nor a shipped name, listing the names.

    Example:
    ```python
    resolve_config("my.yaml")   # 'my.yaml' when the file exists
    ```
    """
    if Path(value).is_file():
        return value
    configs = shipped_configs()
    name = _name(value)
    if name in configs:
        return str(configs[name])
    raise ValueError(f"--config {value}: no such file, and no shipped config of that name; "
                     f"the shipped configs (`kzoo ls`): {list(configs)}")


def resolve_config_args(argv: list[str]) -> list[str]:
    """`argv` with the value of every `--config X` / `--config=X` resolved (`resolve_config`).

    Example:
    ```python
    resolve_config_args(["--config", "gpt/nano_pydocs_pretrain", "--set", "train.steps=2"])
    ```
    """
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            out += [arg, resolve_config(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolve_config(arg.split("=", 1)[1])
        elif arg == "--":  # what follows is positional, left alone
            out += argv[i:]
            break
        out.append(arg)
        i += 1
    return out


def ls_main(argv: list[str], commands: list[str]) -> int:
    """`kzoo ls [--recipe NAME]`: one shipped config a line, with the command it is for.

    Args:
        argv: list[str]. the arguments after `ls`.
        commands: list[str]. the `kzoo` commands, for checking `--recipe`.
    """
    parser = argparse.ArgumentParser(
        prog="kzoo ls", description="List the configs shipped with kzoo and the command each is "
        "for; run one with `kzoo COMMAND --config NAME`, copy one out with `kzoo cp`.")
    parser.add_argument("--recipe", metavar="NAME", help="only the configs of this command")
    args = parser.parse_args(argv)
    wanted = None if args.recipe is None else args.recipe.replace("_", "-")
    if wanted is not None and wanted not in commands:
        print(f"error: --recipe {args.recipe}: not a kzoo command; the commands: {commands}",
              file=sys.stderr)
        return 2
    rows = [(name, recipe_of(path) or "?") for name, path in shipped_configs().items()]
    rows = [row for row in rows if wanted is None or row[1] == wanted]
    width = max((len(name) for name, _ in rows), default=0)
    for name, recipe in rows:
        print(f"{name:<{width}}  {recipe}")
    return 0


def cp_main(argv: list[str]) -> int:
    """`kzoo cp NAME DEST`: copy a shipped config to DEST (a new file, or into a folder).

    Refuses (exit code 2, one line, nothing written) an unknown NAME, an existing DEST file and
    a DEST whose folder does not exist.
    """
    parser = argparse.ArgumentParser(
        prog="kzoo cp", description="Copy a shipped config out to edit it; then run "
        "`kzoo COMMAND --config DEST`.")
    parser.add_argument("name", help="a shipped config, e.g. gpt/nano_pydocs_pretrain")
    parser.add_argument("dest", help="a new .yaml file, or an existing folder to copy into")
    args = parser.parse_args(argv)
    configs = shipped_configs()
    source = configs.get(_name(args.name))
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / f"{Path(_name(args.name)).name}.yaml"
    error = None
    if source is None:
        error = f"{args.name}: not a shipped config; the shipped configs (`kzoo ls`): " \
                f"{list(configs)}"
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
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"copied {_name(args.name)} to {dest}; run it with: "
          f"kzoo {recipe_of(source) or 'COMMAND'} --config {dest}")
    return 0
