"""The `kzoo` command: every recipe of the registry, plus the tools of `TOOLS` (`prepare`,
`chat`, `rate`, `eval`, `serve`, `plan`, `ls`, `cp`).

    kzoo ls                                   # the recipe commands and their shipped configs
    kzoo cp gpt/nano_pydocs_pretrain my.yaml  # copy one out to edit
    kzoo pretrain --config gpt/nano_pydocs_pretrain --set train.steps=20
    kzoo chat runs/gpt_nano_pydocs
    python -m kzoo.cli.main ...               # the same without the console script

The recipe commands, their modules and their configs are one table,
`kzoo.recipes.registry.RECIPES`. `--config` takes a shipped config's name or a path, for every
recipe. Exit codes are the recipes': 0 done, 2 bad input (one `error: ...` line on stderr),
3 stopped on a NaN or exploding loss. Importing this module, `kzoo --help`, `kzoo ls` and
`kzoo cp` import no TensorFlow; a recipe is imported only when it runs.

Example:
```python
from kzoo.cli.main import main
main(["ls", "--recipe", "pretrain"])   # prints pretrain  gpt/baby_shakespeare_char_pretrain ...; 0
```
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import sys

from kzoo.cli._library import load_library
from kzoo.recipes.registry import RECIPES, recipes

# tool -> (the `module:function` its arguments go to, its line in `kzoo --help`)
TOOL_TABLE = {
    "prepare": ("kzoo.cli.prepare:main",
                "Tokenize a corpus of any size into token shards for pre-training."),
    "chat": ("kzoo.cli.chat:main",
             "Chat with a model in the terminal: streamed, multi-turn, /odds shows the odds."),
    "rate": ("kzoo.cli.main:_run_rate",
             "A local page where you rate and correct completions (TRL-format JSONL)."),
    "eval": ("kzoo.cli.eval:main",
             "Run lm-eval tasks on a model offline: a results table and results.json."),
    "serve": ("kzoo.serve.cli:main",
              "Serve a model over OpenAI's HTTP API, many requests decoded together."),
    "plan": ("kzoo.cli.plan:main",
             "Bytes per device of training a model on a mesh, before making any weight."),
    "ls": ("kzoo.cli.configs:ls_main", "List the shipped configs and the command each is for."),
    "cp": ("kzoo.cli.configs:cp_main", "Copy a shipped config out: kzoo cp NAME DEST.yaml."),
}
TOOLS = {name: summary for name, (_, summary) in TOOL_TABLE.items()}


def _command(module: str) -> str:
    return module.replace("_", "-")


def recipe_commands() -> dict[str, str]:
    """The recipe commands of the registry (`kzoo.recipes.registry`) -> their module names.

    Example:
    ```python
    recipe_commands()["export-hf"]   # 'export_hf'
    ```
    """
    return {recipe.command: recipe.name for recipe in RECIPES}


def commands() -> list[str]:
    """Every `kzoo` command: the recipes, then the tools."""
    return [*recipe_commands(), *TOOLS]


def _rate_summary() -> str:
    spec = importlib.util.find_spec("kzoo.cli.rate")
    if spec is None or not spec.origin:
        return "(not installed here) " + TOOLS["rate"]
    try:
        with open(spec.origin, encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
    except (OSError, SyntaxError, UnicodeDecodeError):
        doc = ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    if not first.startswith("`kzoo rate`:"):
        return TOOLS["rate"]
    summary = first.split(":", 1)[1].strip()
    return summary[:1].upper() + summary[1:]


def usage() -> str:
    """The text of `kzoo --help`."""
    tools = {**TOOLS, "rate": _rate_summary()}
    width = max(len(c) for c in commands()) + 2
    lines = ["usage: kzoo COMMAND [ARGS ...]     (kzoo COMMAND --help: its options)", "",
             "Train, align and talk to small language models on your own machine.", "",
             "recipes (--config NAME|FILE, --set key=value; `kzoo ls` lists the NAMEs):"]
    lines += [f"  {recipe.command:<{width}}{recipe.summary}" for recipe in RECIPES]
    lines += ["", "tools:"]
    lines += [f"  {name:<{width}}{summary}" for name, summary in tools.items()]
    lines += ["", "Exit codes: 0 done, 2 bad input (one `error:` line), 3 stopped on a NaN loss."]
    return "\n".join(lines)


@contextlib.contextmanager
def _prog(name: str):
    """argparse names a program after sys.argv[0]: the recipes' `--help` then says `kzoo X`."""
    saved = sys.argv[0] if sys.argv else None
    if saved is None:
        sys.argv.append(name)
    else:
        sys.argv[0] = name
    try:
        yield
    finally:
        if saved is None:
            sys.argv.pop(0)
        else:
            sys.argv[0] = saved


def _exit_code(error: SystemExit) -> int:
    code = error.code
    return code if isinstance(code, int) else (0 if code is None else 2)


def _error(message: str) -> int:
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2


def _run_recipe(command: str, args: list[str]) -> int:
    from kzoo.cli.configs import resolve_config_args

    recipe = recipes()[command]
    if not {"-h", "--help"} & set(args):
        try:
            args = resolve_config_args(args, command)
        except ValueError as error:
            return _error(str(error))
    load_library()
    module = importlib.import_module(recipe.module)
    with _prog(f"kzoo {command}"):
        return module.main(args)


def _run_rate(args: list[str]) -> int:
    try:
        from kzoo.cli import rate
    except ModuleNotFoundError as error:
        if error.name != "kzoo.cli.rate":
            raise
        return _error("kzoo rate is not installed here (no module kzoo.cli.rate)")
    # rate loads TensorFlow and the model itself, only for --run (--candidates needs neither)
    return rate.main(args)


def main(argv: list[str] | None = None) -> int:
    """Run `kzoo ARGS...`; returns the exit code (0, 2 bad input, 3 stopped on NaN).

    Args:
        argv: list[str] or None. the arguments after `kzoo` (default `sys.argv[1:]`).

    Example:
    ```python
    main(["--help"])   # prints the commands; 0
    ```
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    if command in ("-h", "--help", "help"):
        print(usage())
        return 0
    if command == "--version":
        from kzoo.version import __version__

        print(f"kzoo {__version__}")
        return 0
    command = command if command in TOOLS else _command(command)  # export_hf = export-hf
    try:
        if command in recipes():
            return _run_recipe(command, args)
        if command in TOOL_TABLE:
            module, _, function = TOOL_TABLE[command][0].partition(":")
            # __import__ (C's import path), so `python -X importtime` traces the tool's module
            run = getattr(__import__(module, fromlist=[function]), function)
            with _prog(f"kzoo {command}"):
                return run(args)
    except SystemExit as error:  # argparse: --help (0) or a bad flag (2)
        return _exit_code(error)
    return _error(f"unknown command {argv[0]!r}; the commands: {', '.join(commands())} "
                  "(kzoo --help)")


if __name__ == "__main__":
    sys.exit(main())
