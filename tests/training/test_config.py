"""Config loading: validation messages, overrides, round trip, run-dir layout."""

import dataclasses
from typing import Literal

import pytest

from kzoo.training.config import (
    RunDir,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)
from kzoo.training.pretrain import PretrainConfig


@dataclasses.dataclass
class Inner:
    steps: int = 10
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"
    clip: float | None = None
    flag: bool = False


@dataclasses.dataclass
class Outer:
    name: str = "x"
    inner: Inner = dataclasses.field(default_factory=Inner)


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_values(tmp_path):
    cfg = load_config(write(tmp_path, "inner:\n  steps: 5\n  rate: 1\n"), Outer)
    assert cfg.inner.steps == 5 and cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
    assert cfg.name == "x" and cfg.inner.mode == "a"


def test_unknown_key_names_file_and_valid_keys(tmp_path):
    path = write(tmp_path, "inner:\n  stpes: 5\n")
    with pytest.raises(ValueError) as info:
        load_config(path, Outer)
    message = str(info.value)
    assert str(path) in message and "'inner.stpes'" in message
    assert "valid keys: steps, rate, mode, clip, flag" in message


def test_wrong_type_names_key_and_expected_type(tmp_path):
    with pytest.raises(ValueError, match=r"'inner.steps' expects int, got str 'many'"):
        load_config(write(tmp_path, "inner:\n  steps: many\n"), Outer)
    with pytest.raises(ValueError, match=r"'inner.mode' expects one of 'a', 'b'"):
        load_config(write(tmp_path, "inner:\n  mode: c\n"), Outer)
    with pytest.raises(ValueError, match=r"'inner.flag' expects bool"):
        load_config(write(tmp_path, "inner:\n  flag: 1\n"), Outer)
    with pytest.raises(ValueError, match=r"'inner' expects a mapping"):
        load_config(write(tmp_path, "inner: 3\n"), Outer)


def test_overrides(tmp_path):
    path = write(tmp_path, "inner:\n  steps: 5\n")
    cfg = load_config(path, Outer, ["inner.steps=7", "inner.clip=0.5", "name=run one"])
    assert (cfg.inner.steps, cfg.inner.clip, cfg.name) == (7, 0.5, "run one")
    assert load_config(path, Outer, ["inner.clip=null"]).inner.clip is None
    assert load_config(path, Outer, ["inner.rate=3e-4"]).inner.rate == 3e-4  # not a string
    with pytest.raises(ValueError, match=r"--set overrides: unknown key 'inner.bogus'"):
        load_config(path, Outer, ["inner.bogus=1"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        apply_overrides({}, ["inner.steps"])


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", Outer)
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(write(tmp_path, "inner: [\n"), Outer)
    with pytest.raises(ValueError, match="must be a mapping"):
        load_config(write(tmp_path, "- 1\n"), Outer)


def test_yaml_tags_are_not_executed(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(path, Outer)


def test_save_round_trip(tmp_path):
    cfg = config_from_dict({"inner": {"steps": 3}}, Outer)
    save_config(cfg, tmp_path / "out.yaml", header="hello")
    assert (tmp_path / "out.yaml").read_text().startswith("# hello\n")
    assert load_config(tmp_path / "out.yaml", Outer) == cfg


def test_shipped_pretrain_configs_load():
    import glob

    paths = glob.glob("recipes/configs/*/*_pretrain.yaml")
    assert len(paths) >= 3
    for path in paths:
        first = open(path).readline()
        assert first.startswith("# python recipes/pretrain.py --config " + path), path
        load_config(path, PretrainConfig)


def test_run_dir_layout(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.model.name == "model.keras" and run.tokenizer.name == "tokenizer"
    assert not run.has_checkpoint()
    run.backup.mkdir(parents=True)
    (run.backup / "LATEST").write_text("step-0000001")
    assert run.has_checkpoint()
