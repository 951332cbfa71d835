"""Typed YAML configs with validation and `--set a.b=c` overrides, plus the run-directory layout.

A config schema is a tree of dataclasses. `load_config` reads YAML with a `yaml.SafeLoader`
(never executes code), applies overrides, and checks every key and type against the schema:
an unknown key names the file and the valid keys, a wrong type names the key and the type
expected. Supported field types: `bool`, `int`, `float` (ints accepted), `str`, `X | None`,
`Literal[...]`, `list[X]`, `dict[str, Any]` and nested dataclasses.

Reuse from another recipe (e.g. preference tuning):

```python
@dataclasses.dataclass
class MyTrain:
    steps: int = 100
    beta: float = 0.1

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
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

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
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(value, tp, key, source)
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _type_error(value, tp, key, source)
        return dict(value)
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
    return _build(data, schema, source)


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
        node[keys[-1]] = _yaml_load(raw) if raw.strip() else ""
    return data


def load_config(path: str | os.PathLike, schema: type[T], overrides: list[str] = ()) -> T:
    """Read YAML `path`, apply `overrides` (`["train.steps=100"]`), validate against `schema`.

    Args:
        path: str | PathLike. YAML file.
        schema: type. the root dataclass.
        overrides: list[str]. `dotted.key=value` strings; values are parsed as YAML.

    Raises:
        ValueError: unreadable YAML, unknown keys or wrong types (naming file and key).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        data = _yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping, got {type(data).__name__}")
    source = f"{path}" + (" with --set overrides" if overrides else "")
    return config_from_dict(apply_overrides(data, list(overrides)), schema, source)


def config_to_dict(config) -> dict:
    """Return a config dataclass as nested plain dicts."""
    return dataclasses.asdict(config)


def save_config(config, path: str | os.PathLike, header: str | None = None) -> None:
    """Write the resolved config as YAML, atomically (temporary file, then rename)."""
    path = Path(path)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunDir:
    """The layout of one training run's folder (shared by all kzoo recipes).

    ```
    run_dir/
      config.yaml        resolved config (after overrides)
      tokenizer/         saved tokenizer (kzoo.tokenizers.load_tokenizer)
      model.keras        final model;  best.keras: best validation loss
      metrics.csv        per-interval loss, val_loss, val_perplexity, lr
      loss.png           loss curves;  tensorboard/: TensorBoard logs
      backup/            resumable checkpoints: LATEST names the newest complete one
    ```

    Args:
        root: str | PathLike. the run folder.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.tokenizer = self.root / "tokenizer"
        self.model = self.root / "model.keras"
        self.best_model = self.root / "best.keras"
        self.metrics = self.root / "metrics.csv"
        self.loss_plot = self.root / "loss.png"
        self.tensorboard = self.root / "tensorboard"
        self.backup = self.root / "backup"

    def has_checkpoint(self) -> bool:
        """True when the folder holds a complete resumable checkpoint."""
        return (self.backup / "LATEST").is_file()

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"
