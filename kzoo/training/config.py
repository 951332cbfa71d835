"""Typed YAML configs with validation and `--set a.b=c` overrides, plus the run-directory layout.

A config schema is a tree of dataclasses. `load_config` reads YAML with a `yaml.SafeLoader`
(never executes code), applies overrides, and checks every key and type against the schema:
an unknown key names the file and the valid keys, a wrong type names the key and the type
expected, and a value its field refuses names the key and the value. Supported field types:
`bool`, `int`, `float` (ints accepted), `str`, `X | None`, `Literal[...]`, `list[X]`,
`dict[str, X]` and nested dataclasses. Every error is one line (a YAML syntax error gives the
line and column), which the recipes print as `error: ...` before exiting with code 2.

A field declares its value check with `checked(default, check)`: a name in `CHECKS`
("positive": > 0 and finite, "non_negative", "finite", "fraction": in (0, 1), "probability":
in [0, 1]) or a `Check` (`between(2, 50)`, `at_least(2)`). `load_config` and
`config_from_dict` apply them (`check_values`), so every recipe's config gets them; None always
passes, a list's items are checked one by one.

Reuse from another recipe (e.g. preference tuning):

```python
@dataclasses.dataclass
class MyTrain:
    steps: int = checked(100, "positive")
    beta: float = checked(0.1, "positive")

@dataclasses.dataclass
class MyConfig:
    run_dir: str = "runs/x"
    train: MyTrain = dataclasses.field(default_factory=MyTrain)

cfg = load_config("my.yaml", MyConfig, overrides=["train.steps=5"])
run = RunDir(cfg.run_dir)          # run.config, run.tokenizer, run.model, run.metrics, ...
save_config(cfg, run.config)
```

Example:

>>> import dataclasses
>>> @dataclasses.dataclass
... class C:
...     steps: int = 1
>>> config_from_dict({"steps": 3}, C).steps
3
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from kzoo._files import read_text
from kzoo.training.run_folder import RunDir  # noqa: F401  (its home before run_folder)

T = typing.TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only


def yaml_error_line(error: yaml.YAMLError) -> str:
    """A YAML error as one line: `at line L, column C: what went wrong`.

    Args:
        error: yaml.YAMLError. what PyYAML raised (its own text spans several lines).
    """
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or getattr(error, "context", None)
    if problem is None:  # a ReaderError (a character YAML cannot hold) or another kind
        problem = " ".join(str(error).split())
    where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def read_yaml(path: str | os.PathLike):
    """Read YAML file `path` with the config loader (a SafeLoader: plain data, no code).

    Raises:
        ValueError: one line naming the file: missing, unreadable, not UTF-8, not valid YAML.
    """
    path = Path(path)
    text = read_text(path, f"config file {path} does not exist")
    try:
        return _yaml_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML {yaml_error_line(error)}") from None


# ----------------------------------------------------------------------------- value checks
@dataclasses.dataclass(frozen=True)
class Check:
    """A rule for a config value, declared on its field (`checked(...)`).

    Args:
        requirement: str. what a good value is, as in "must be > 0".
        predicate: callable. `predicate(value) -> bool`, True for a good value.
        finite: bool. also refuse NaN and infinities (the message then says "and finite").
    """

    requirement: str
    predicate: typing.Callable[[Any], bool]
    finite: bool = False

    def message(self, value) -> str | None:
        """None for a good value, else "must be ..., got VALUE"."""
        finite = not self.finite or not isinstance(value, float) or math.isfinite(value)
        if finite and self.predicate(value):
            return None
        extra = " and finite" if self.finite and isinstance(value, float) else ""
        return f"{self.requirement}{extra}, got {value!r}"


def between(low, high, low_open: bool = False, high_open: bool = False) -> Check:
    """A `Check` for low <= value <= high (`low_open`/`high_open`: strict at that end)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return Check(f"must be in {left}{low}, {high}{right}",
                 lambda v: (v > low if low_open else v >= low)
                 and (v < high if high_open else v <= high))  # NaN fails both comparisons


def at_least(low) -> Check:
    """A `Check` for value >= low."""
    return Check(f"must be >= {low}", lambda v: v >= low)  # NaN fails the comparison


# The named checks a field can declare: `checked(1e-3, "positive")`.
CHECKS: dict[str, Check] = {
    "positive": Check("must be > 0", lambda v: v > 0, finite=True),
    "non_negative": Check("must be >= 0", lambda v: v >= 0, finite=True),
    "finite": Check("must be finite", lambda v: not isinstance(v, float) or math.isfinite(v)),
    "fraction": between(0, 1, low_open=True, high_open=True),
    "probability": between(0, 1),
}


def checked(default=dataclasses.MISSING, check: str | Check | None = None, *,
            default_factory=dataclasses.MISSING):
    """A dataclass field whose value `load_config` checks (None always passes; a list's items
    are checked one by one).

    Args:
        default: the field's default.
        check: str or Check. a name in `CHECKS` ("positive", "non_negative", "finite",
            "fraction", "probability") or a `Check` such as `between(2, 50)`.
        default_factory: callable. instead of `default`, for lists and dicts.

    Example:
    ```python
    @dataclasses.dataclass
    class Train:
        learning_rate: float = checked(1e-3, "positive")
        warmup_steps: int = checked(0, "non_negative")
    ```
    """
    if isinstance(check, str) and check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; known checks: {', '.join(CHECKS)}")
    if not isinstance(check, str | Check):
        raise ValueError(f"`check` must be a name in CHECKS or a Check, got {check!r}")
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"check": check})


def check_values(config, source: str = "<config>", prefix: str = "") -> None:
    """Apply the checks declared on the fields of dataclass `config` (and its sections).

    Raises:
        ValueError: `SOURCE: key 'train.learning_rate' must be > 0 and finite, got -1.0`.
    """
    for field in dataclasses.fields(config):
        value, key = getattr(config, field.name), prefix + field.name
        if dataclasses.is_dataclass(value):
            check_values(value, source, key + ".")
            continue
        check = field.metadata.get("check")
        if check is None or value is None:
            continue
        check = CHECKS[check] if isinstance(check, str) else check
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            problem = None if item is None else check.message(item)
            if problem:
                where = key if i is None else f"{key}[{i}]"
                raise ValueError(f"{source}: key {where!r} {problem}")


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp, key: str, source: str):
    """Check `value` against type `tp`; return it (ints widened to float where float is asked)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if isinstance(tp, types.UnionType) or origin is typing.Union:
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key, source)
            except ValueError:
                continue
        raise _type_error(value, tp, key, source)
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(value, tp, key, source)
    if origin is Literal:
        # Compare types too: YAML `1` must not match Literal[True].
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            return value
        raise _type_error(value, tp, key, source)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _type_error(value, tp, key, source)
        return _build(value, tp, source, prefix=key + ".")
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise _type_error(value, tp, key, source)
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _type_error(value, tp, key, source)
        key_type, item = typing.get_args(tp) or (Any, Any)
        if key_type is str:
            bad = next((k for k in value if not isinstance(k, str)), None)
            if bad is not None:
                raise ValueError(f"{source}: key {key!r} expects a mapping with str keys, "
                                 f"got key {bad!r}")
        return {k: _convert(v, item, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise _type_error(value, tp, key, source)


def _type_error(value, tp, key, source) -> ValueError:
    return ValueError(
        f"{source}: key {key!r} expects {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )


def _build(data: dict, cls: type[T], source: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"section {prefix[:-1]!r}" if prefix else "the top level"
        raise ValueError(
            f"{source}: unknown key {prefix + str(unknown[0])!r} in {where}; "
            f"valid keys: {', '.join(names)}"
        )
    values = {k: _convert(v, hints[k], prefix + k, source) for k, v in data.items()}
    return cls(**values)


def config_from_dict(data: dict, schema: type[T], source: str = "<config>") -> T:
    """Validate a plain dict against a dataclass `schema` and return the dataclass."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: the config must be a mapping, got {type(data).__name__}")
    config = _build(data, schema, source)
    check_values(config, source)
    return config


def apply_overrides(data: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply `a.b=value` strings to a nested dict (values parsed as YAML scalars)."""
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"{source} {item!r}: expected KEY=VALUE such as train.steps=100")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        if not all(keys):
            raise ValueError(f"{source} {item!r}: empty key in {path!r}")
        node = data
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ValueError(f"{source} {item!r}: {k!r} is not a section")
            node = child
        try:
            node[keys[-1]] = _yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ValueError(f"{source} {item!r}: not valid YAML {yaml_error_line(error)}"
                             ) from None
    return data


def load_config(path: str | os.PathLike, schema: type[T], overrides: list[str] = ()) -> T:
    """Read YAML `path`, apply `overrides` (`["train.steps=100"]`), validate against `schema`.

    Args:
        path: str | PathLike. YAML file.
        schema: type. the root dataclass.
        overrides: list[str]. `dotted.key=value` strings; values are parsed as YAML.

    Raises:
        ValueError: one line naming the file, and the key or value: unreadable YAML, an
            unknown key, a wrong type or a value its field's check refuses (`checked`).
    """
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping, got {type(data).__name__}")
    source = f"{path}" + (" with --set overrides" if overrides else "")
    return config_from_dict(apply_overrides(data, list(overrides)), schema, source)


def config_to_dict(config) -> dict:
    """Return a config dataclass as nested plain dicts."""
    return dataclasses.asdict(config)


def rerun_header(command: str, config_path: str | os.PathLike) -> str:
    """The header a recipe writes atop its run's `config.yaml`: the `kzoo` command rerunning it.

    Rerunning it continues the run in the same folder (the config names its `run_dir`); it
    works wherever kzoo is installed, unlike a `python recipes/...` script path. The path is
    quoted for a POSIX shell when it needs to be.

    Args:
        command: str. the recipe's `kzoo` command (`kzoo.recipes.registry`), e.g. "dpo".
        config_path: str | PathLike. the `config.yaml` being written.

    Example:
    ```python
    rerun_header("sft", "runs/a b/config.yaml")   # "kzoo sft --config 'runs/a b/config.yaml'"
    save_config(cfg, run.config, header=rerun_header("sft", run.config))
    ```
    """
    return f"kzoo {command} --config {shlex.quote(str(config_path))}"


def save_config(config, path: str | os.PathLike, header: str | None = None) -> None:
    """Write the resolved config as YAML, atomically (temporary file, then rename).

    Args:
        config: a config dataclass.
        path: str | PathLike. the YAML file to write.
        header: str or None. comment lines written first (`rerun_header(...)` for a run).
    """
    path = Path(path)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
