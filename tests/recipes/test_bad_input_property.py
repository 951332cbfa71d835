"""Property: every recipe command line answers a bad config file or a bad `--set` value with
exit code 2, exactly one `error: ...` line on stderr, no traceback, and nothing written.

Each example is built to be wrong by construction (a YAML syntax error, an unknown key, a value
of the wrong type, a number the issue calls nonsense, a malformed `--set`), so a valid config
never reaches training. The recipes' `main(argv)` run in-process: no subprocess per example.
"""

import contextlib
import functools
import io
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import kzoo.training  # noqa: F401  (imported once here: no import-time warnings in examples)
from kzoo.training.config import _yaml_load
from tests.helpers import load_recipe

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "pretrain": "gpt/nano_pydocs_pretrain.yaml",
    "sft": "gpt/baby_instruction_sft.yaml",
    "dpo": "gpt/baby_instruction_dpo.yaml",
    "reward": "gpt/baby_instruction_reward.yaml",
    "feedback_loop": "gpt/nano_arithmetic_dpo.yaml",
    "generate": "gpt/baby_shakespeare_char_generate.yaml",
}
NAN_INF = st.sampled_from([".nan", ".inf", "-.inf"])
NOT_POSITIVE_FLOAT = st.one_of(NAN_INF, st.floats(max_value=0.0, allow_nan=False,
                                                  allow_infinity=False).map(repr))
NOT_POSITIVE_INT = st.integers(max_value=0).map(str)
NEGATIVE_INT = st.integers(max_value=-1).map(str)
NEGATIVE_OR_NAN = st.one_of(NAN_INF, st.floats(max_value=-1e-9, allow_nan=False,
                                               allow_infinity=False).map(repr))
# The nonsense values, per recipe: (key, values that must be refused at load).
BAD_NUMBERS = {
    "pretrain": [("train.learning_rate", NOT_POSITIVE_FLOAT), ("train.warmup_steps", NEGATIVE_INT),
                 ("train.steps_per_execution", NOT_POSITIVE_INT),
                 ("train.batch_size", NOT_POSITIVE_INT), ("sample.max_new_tokens", NEGATIVE_INT),
                 ("sample.temperature", NEGATIVE_OR_NAN)],
    "sft": [("train.learning_rate", NOT_POSITIVE_FLOAT), ("train.batch_size", NOT_POSITIVE_INT),
            ("train.epochs", NOT_POSITIVE_INT)],
    "feedback_loop": [("loop.pretrain_learning_rate", NOT_POSITIVE_FLOAT),
                      ("loop.dpo_learning_rate", NOT_POSITIVE_FLOAT),
                      ("loop.pretrain_epochs", NOT_POSITIVE_INT),
                      ("loop.dpo_batch_size", NOT_POSITIVE_INT)],
    "generate": [("max_new_tokens", NOT_POSITIVE_INT), ("temperature", NEGATIVE_OR_NAN),
                 ("temperatures", NOT_POSITIVE_FLOAT.map(lambda v: f"[1.0, {v}]"))],
}
BAD_NUMBERS["dpo"] = BAD_NUMBERS["reward"] = BAD_NUMBERS["sft"]
BROKEN_YAML = ["[", "{a: 1", "'unclosed", '"unclosed', "x: y: z", "!!python/object/apply:os.system"
               " [ls]", "@at", "`tick", "*undefined_alias", "{a: [}", "- - [", "\x00", "%TAG"]
MALFORMED_SETS = ["a.b", "=1", "train.steps=[", ".=1", "train.=1", ".train=1", "a..b=1", "=",
                  "train.steps={", 'train.steps="x', "seed.x=1", "run_dir.x=1", "nope=1"]


@functools.cache
def recipe(name):
    return load_recipe(name)


# Valid and tiny: a bad value that slipped past the loader would train for a moment (exit 0, a
# run folder) and fail the property, instead of failing later for an unrelated reason.
TINY = {
    "pretrain": {"tokenizer.kind": "char", "tokenizer.vocab_size": None,
                 "model.args": {"num_layers": 1, "max_sequence_length": 16},
                 "train.block_size": 8, "train.batch_size": 2, "train.steps": 1,
                 "train.eval_interval": 1, "train.val_batches": 1, "train.warmup_steps": 0,
                 "train.verbose": 0, "train.tensorboard": False, "train.jit_compile": False,
                 "sample.max_new_tokens": 2},
    "sft": {"data.path": "DATA", "model.preset": "gpt_nano", "model.init_from": None,
            "model.args": {"num_layers": 1}, "data.max_length": 32, "data.validation_fraction": 0.5,
            "train.epochs": 1, "train.verbose": 0, "train.jit_compile": False},
    "feedback_loop": {"loop.max_operand": 2, "loop.lines_per_problem": 2,
                      "loop.pretrain_epochs": 1, "loop.samples_per_prompt": 2, "loop.rounds": 1,
                      "loop.dpo_epochs": 1, "loop.control": False, "loop.num_show": 1,
                      "loop.eval_samples_per_prompt": 1,
                      "loop.model": {"num_layers": 1, "num_heads": 2, "hidden_dim": 16,
                                     "intermediate_dim": 32, "max_sequence_length": 16}},
    "generate": {"max_new_tokens": 2},
}
TINY["dpo"] = TINY["reward"] = TINY["sft"]
RECORDS = {  # the tiny data file DATA of the fine-tuning recipes
    "sft": [{"instruction": f"say {i}", "input": "", "output": f"{i}"} for i in range(8)],
    "dpo": [{"prompt": f"say {i}", "chosen": f"{i}", "rejected": f"{i + 1}"} for i in range(8)],
}
RECORDS["reward"] = RECORDS["dpo"]


@functools.cache
def base(name) -> dict:
    data = yaml.safe_load((ROOT / "recipes/configs" / CONFIGS[name]).read_text())
    for key, value in TINY.get(name, {}).items():
        data = set_key(data, key, value)
    return data


def is_section(prefix: str, key: str, value) -> bool:
    """A nested config section (not a free-form mapping such as `model.args`)."""
    return isinstance(value, dict) and key != "args" and f"{prefix}{key}" != "loop.model"


def leaves(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in data.items():
        if is_section(prefix, key, value):
            out += leaves(value, f"{prefix}{key}.")
        elif key != "run_dir" and value is not None:
            out.append((prefix + key, value))
    return out


def sections(data: dict, prefix: str = "") -> list[str]:
    out = [prefix]
    for key, value in data.items():
        if is_section(prefix, key, value):
            out += sections(value, f"{prefix}{key}.")
    return out


def valid_keys(name: str, section: str) -> set:
    """The schema's field names in `section` ("" is the top level)."""
    import dataclasses
    import typing

    if name == "generate":
        return set(recipe(name).CONFIG_KEYS)
    from kzoo.training import PretrainConfig

    cls = PretrainConfig if name == "pretrain" else next(
        v for k, v in vars(recipe(name)).items()
        if k in ("SFTConfig", "DPOConfig", "RewardConfig", "FeedbackConfig"))
    for part in filter(None, section.split(".")):
        cls = typing.get_type_hints(cls)[part]
    return {f.name for f in dataclasses.fields(cls)}


def set_key(data: dict, dotted: str, value) -> dict:
    import copy

    data = copy.deepcopy(data)
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def wrong_value(value):
    """YAML values of a type the base value's key cannot take."""
    if isinstance(value, bool):
        return st.sampled_from(["3", "'true'", "[true]", "{a: 1}"])
    if isinstance(value, int | float):
        return st.sampled_from(["abc", "[1, 2]", "{a: 1}", "true", "''"])
    if isinstance(value, str):
        return st.sampled_from(["[1]", "{a: 1}", "12", "true", "1.5"])
    if isinstance(value, list):
        return st.sampled_from(["5", "{a: 1}", "[[1]]", "[{a: 1}]"])
    return st.sampled_from(["5", "[1]", "abc"])  # a mapping


def parses(text: str) -> bool:
    try:
        _yaml_load(text)
    except yaml.YAMLError:
        return False
    return True


@st.composite
def bad_input(draw, name):
    """(config text, extra argv) for recipe `name`, wrong by construction. `RUN` in the text
    stands for the run folder inside the example's temporary folder."""
    data = set_key(base(name), "run_dir", "RUN")
    kind = draw(st.sampled_from(["syntax", "unknown", "type", "number", "number_set", "set"]
                                if name != "generate" else
                                ["syntax", "unknown", "type", "number", "number_flag"]))
    event(kind)
    if kind == "syntax":
        lines = dump(data).splitlines()
        fragment = draw(st.one_of(st.sampled_from(BROKEN_YAML).map(lambda f: "key: " + f),
                                  st.sampled_from(BROKEN_YAML),
                                  st.text(alphabet=":[]{}'\"!&*@`%|>\t\n -?ab1", min_size=1,
                                          max_size=12)))
        at = draw(st.integers(0, len(lines)))
        text = "\n".join(lines[:at] + [fragment] + lines[at:]) + "\n"
        assume(not parses(text))
        return text, []
    if kind == "unknown":
        section = draw(st.sampled_from(sections(data)))
        key = draw(st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True))
        assume(key not in valid_keys(name, section))
        return dump(set_key(data, section + key, 1)), []
    if kind == "type":
        key, value = draw(st.sampled_from(leaves(data)))
        bad = draw(wrong_value(value))
        return dump(set_key(data, key, "BAD")).replace("BAD", bad), []
    key, values = draw(st.sampled_from(BAD_NUMBERS[name]))
    value = draw(values)
    if kind == "number":
        return dump(set_key(data, key, "BAD")).replace("'BAD'", value).replace("BAD", value), []
    if kind == "number_flag":  # recipes/generate.py: the same values as command-line flags
        flag = "--" + key.replace("_", "-")
        value = value.replace(".nan", "nan").replace(".inf", "inf")
        if key == "temperatures":  # nargs="+"; argparse takes "-1e+16" for an option
            bad = draw(st.sampled_from(["0", "0.0", "nan", "inf", "-1", "-0.5", "-0.0"]))
            return dump(data), [flag, "1.0", bad]
        return dump(data), [f"{flag}={value}"]
    if kind == "number_set":
        return dump(data), [f"--set={key}={value}"]
    item = draw(st.one_of(
        st.sampled_from(MALFORMED_SETS),
        st.text(alphabet="abc._ ", min_size=1, max_size=8),  # no "=" at all
        st.text(max_size=8).map(lambda v: "=" + v),  # an empty key
        st.tuples(st.sampled_from([k for k, _ in leaves(data)]),
                  st.sampled_from(BROKEN_YAML).filter(lambda v: not parses(v))).map("=".join),
    ))
    return dump(data), [f"--set={item}"]


def run_main(name, text, extra, run_folder=None):
    """Run recipe `name` on config `text` in a fresh temporary folder.

    Returns `(exit code, stderr, paths written into the folder)`. `RUN` in `text` becomes
    `run_folder` (recipes/generate.py: a run to read) or a new folder inside the temporary one;
    `DATA` the tiny data file of the fine-tuning recipes."""
    import json

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        config, data = folder / "config.yaml", folder / "data.json"
        data.write_text(json.dumps(RECORDS.get(name, [])))
        text = text.replace("RUN", str(run_folder or folder / "run"))
        config.write_text(text.replace("DATA", str(data)), encoding="utf-8")
        argv = ["--config", str(config), *extra]
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = recipe(name).main(argv)
            except BaseException as error:  # noqa: BLE001 (the property: nothing escapes)
                pytest.fail(f"{name} {argv} raised {type(error).__name__}: {error}\n{text}")
        written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                         if p not in (config, data))
    return code, err.getvalue(), written


@pytest.fixture(scope="module")
def generate_run(tmp_path_factory):
    """A run folder recipes/generate.py can read (a fresh gpt_nano on byte tokens)."""
    from kzoo.models import CausalLM
    from kzoo.tokenizers import ByteTokenizer

    root = tmp_path_factory.mktemp("generate_run")
    CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=32).save(
        root / "model.keras")
    ByteTokenizer().save(root / "tokenizer")
    return root


def test_the_tiny_base_configs_are_valid(generate_run):
    for name in ("generate", "sft"):
        text = dump(set_key(base(name), "run_dir", "RUN"))
        code, err, _ = run_main(name, text, [], generate_run if name == "generate" else None)
        assert code == 0, err


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bad_config_or_override_is_exit_2_one_line_nothing_written(name, generate_run):
    recipe(name)  # import once, outside the examples
    run_folder = generate_run if name == "generate" else None

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
    @given(bad_input(name))
    def check(case):
        text, extra = case
        code, err, written = run_main(name, text, extra, run_folder)
        context = f"\n--- argv extra: {extra}\n--- config:\n{text}\n--- stderr:\n{err}"
        assert code == 2, context
        assert "Traceback" not in err, context
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), context
        assert written == [], f"left behind {written}" + context

    check()


@pytest.mark.parametrize("name, extra, text_change", [
    # Each of these failed before the fix (a raw traceback, or a run folder left behind).
    ("pretrain", ["--set", "train.steps=["], None),
    ("sft", ["--set", "train.learning_rate=-1"], None),
    ("dpo", ["--set", "train.epochs=0"], None),
    ("generate", [], ("prompt:", "prompt: [")),
    ("generate", ["--temperature", "nan"], None),
])
def test_named_cases(name, extra, text_change, generate_run):
    text = dump(set_key(base(name), "run_dir", "RUN"))
    if text_change:
        text = text.replace(*text_change, 1)
    code, err, written = run_main(name, text, extra, generate_run if name == "generate" else None)
    assert (code, len(err.splitlines()), written) == (2, 1, []), err
    assert err.startswith("error: ") and "Traceback" not in err


def test_values_are_really_checked_as_numbers():
    assert math.isnan(_yaml_load(".nan")) and _yaml_load("-0.0") == 0.0
