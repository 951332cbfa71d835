"""Config loading: validation messages, overrides, round trip, run-dir layout."""

import dataclasses
from typing import Literal

import pytest

from kzoo.training.config import (
    RunDir,
    apply_overrides,
    between,
    checked,
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
    from kzoo.recipes.registry import get_recipe, shipped_configs

    names = get_recipe("pretrain").configs
    assert len(names) >= 3
    for name in names:
        load_config(shipped_configs()[name], PretrainConfig)


def test_run_dir_layout(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.model.name == "model.keras" and run.tokenizer.name == "tokenizer"
    assert not run.has_checkpoint()
    run.backup.mkdir(parents=True)
    (run.backup / "LATEST").write_text("step-0000001")
    assert run.has_checkpoint()


# ----------------------------------------------------------------- one-line errors, value checks
def test_yaml_syntax_error_is_one_line_naming_file_and_position(tmp_path):
    path = write(tmp_path, "inner:\n  steps: [1,\n  rate: 2\n")
    with pytest.raises(ValueError) as info:
        load_config(path, Outer)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid YAML at line ") and "column" in message


@pytest.mark.parametrize("item", ["inner.steps=[", "inner.steps={a: 1", "inner.steps='x",
                                  "inner.steps=!!python/object/apply:os.system [ls]",
                                  "inner.steps=\x00"])
def test_unparsable_override_value_is_one_line_naming_the_override(tmp_path, item):
    with pytest.raises(ValueError) as info:
        load_config(write(tmp_path, "name: x\n"), Outer, [item])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--set {item!r}: not valid YAML")


def test_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ValueError, match=rf"{path}: not UTF-8 text .*byte 9"):
        load_config(path, Outer)


def test_dict_keys_must_be_strings(tmp_path):
    @dataclasses.dataclass
    class WithArgs:
        args: dict[str, int] = dataclasses.field(default_factory=dict)

    with pytest.raises(ValueError, match=r"key 'args' expects a mapping with str keys, got key 1"):
        load_config(write(tmp_path, "args: {1: 2}\n"), WithArgs)
    with pytest.raises(ValueError, match=r"key 'args.a' expects int, got str 'x'"):
        load_config(write(tmp_path, "args: {a: x}\n"), WithArgs)


@dataclasses.dataclass
class Checked:
    rate: float = checked(1e-3, "positive")
    warmup: int = checked(0, "non_negative")
    clip: float | None = checked(None, "positive")
    fraction: float = checked(0.1, "fraction")
    temperatures: list[float] = checked(check="positive", default_factory=lambda: [1.0])
    top: int = checked(5, between(1, 10))


@pytest.mark.parametrize("text, message", [
    ("rate: -1", "key 'rate' must be > 0 and finite, got -1.0"),
    ("rate: 0", "key 'rate' must be > 0 and finite, got 0.0"),
    ("rate: .nan", "key 'rate' must be > 0 and finite, got nan"),
    ("rate: .inf", "key 'rate' must be > 0 and finite, got inf"),
    ("warmup: -1", "key 'warmup' must be >= 0, got -1"),
    ("clip: 0", "key 'clip' must be > 0 and finite, got 0.0"),
    ("fraction: 1", "key 'fraction' must be in (0, 1), got 1.0"),
    ("temperatures: [1, -2]", "key 'temperatures[1]' must be > 0 and finite, got -2.0"),
    ("top: 11", "key 'top' must be in [1, 10], got 11"),
])
def test_value_checks_name_file_key_and_value(tmp_path, text, message):
    path = write(tmp_path, text + "\n")
    with pytest.raises(ValueError) as info:
        load_config(path, Checked)
    assert str(info.value) == f"{path}: {message}"


def test_value_checks_accept_good_values_and_none(tmp_path):
    cfg = load_config(write(tmp_path, "rate: 2\nwarmup: 0\nclip: null\ntemperatures: [0.5]\n"),
                      Checked)
    assert (cfg.rate, cfg.warmup, cfg.clip, cfg.temperatures) == (2.0, 0, None, [0.5])
    with pytest.raises(ValueError, match=r"with --set overrides: key 'rate' must be > 0"):
        load_config(write(tmp_path, "rate: 2\n"), Checked, ["rate=-3"])


def test_an_unknown_check_name_fails_at_class_definition():
    with pytest.raises(ValueError, match="unknown check 'postive'; known checks: "):
        checked(1.0, "postive")


# Every recipe's nonsensical values, refused at load (the list plus their siblings).
RECIPE_BAD_VALUES = {
    "pretrain": ["train.learning_rate=0", "train.learning_rate=-1", "train.learning_rate=.nan",
                 "train.learning_rate=.inf", "train.warmup_steps=-1",
                 "train.steps_per_execution=0", "train.batch_size=0", "train.steps=0",
                 "sample.max_new_tokens=-1", "sample.temperature=-0.5",
                 "sample.temperature=.nan", "train.min_learning_rate=-1e-4",
                 "train.clip_norm=0", "data.validation_fraction=1.5", "train.beta_2=1"],
    "sft": ["train.learning_rate=0", "train.learning_rate=-.inf", "train.batch_size=0",
            "train.epochs=0", "data.max_length=0", "data.validation_fraction=0"],
    "dpo": ["train.learning_rate=-1", "train.batch_size=0", "train.epochs=0",
            "train.eval_interval=0", "dpo.beta=0", "dpo.label_smoothing=0.7"],
    "reward": ["train.learning_rate=.nan", "train.batch_size=-2", "train.epochs=0"],
    "feedback_loop": ["loop.pretrain_learning_rate=0", "loop.dpo_learning_rate=.inf",
                      "loop.pretrain_epochs=0", "loop.dpo_epochs=0",
                      "loop.pretrain_batch_size=0", "loop.dpo_batch_size=0", "loop.beta=-1",
                      "loop.max_operand=51", "loop.correct_fraction=1.5"],
}


SCHEMAS = {"sft": "SFTConfig", "dpo": "DPOConfig", "reward": "RewardConfig",
           "feedback_loop": "FeedbackConfig"}


def _recipe_schema(name):
    if name == "pretrain":
        return PretrainConfig
    from tests.helpers import load_recipe

    return getattr(load_recipe(name), SCHEMAS[name])


@pytest.mark.parametrize("recipe, item", [(r, i) for r, items in RECIPE_BAD_VALUES.items()
                                          for i in items])
def test_every_recipe_refuses_nonsense_values_at_load(recipe, item):
    from kzoo.recipes.registry import get_recipe, shipped_configs

    schema = _recipe_schema(recipe)
    path = shipped_configs()[get_recipe(recipe).configs[0]]  # the registry's, not a comment's
    load_config(path, schema)  # the shipped config itself is fine
    key = item.split("=")[0]
    with pytest.raises(ValueError, match=rf"with --set overrides: key '{key}' must be "):
        load_config(path, schema, [item])


def test_a_bare_list_field_takes_a_list():
    import dataclasses

    from kzoo.training.config import config_from_dict

    @dataclasses.dataclass
    class WithList:
        items: list = dataclasses.field(default_factory=list)

    assert config_from_dict({"items": [1, "a", {"b": 2}]}, WithList).items == [1, "a", {"b": 2}]
