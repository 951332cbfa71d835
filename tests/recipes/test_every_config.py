"""Every YAML under recipes/configs: headed by the command that runs it, named
`<size>_<data>_<method>.yaml`, valid under its recipe's schema, and one tiny step of it runs.

The tiny step keeps each config's recipe, family, tokenizer and method, and shrinks only the
data, the depth and the number of steps.
"""

import io
import json
import re
from pathlib import Path

import pytest
import yaml

from kzoo.models import list_presets
from tests.helpers import load_recipe

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*/*.yaml"))
HEADER = re.compile(r"# python recipes/(\w+)\.py --config (recipes/configs/\S+\.yaml)(\s|$)")


def _recipe_of(path: Path) -> str:
    return HEADER.match(path.read_text().splitlines()[0]).group(1)


def _load_recipe(name: str):
    return load_recipe(name)


def _sets(items):
    return sum((["--set", item] for item in items), [])


def test_configs_exist_for_every_recipe():
    # Config-driven recipes run through kzoo.training.recipe.run_recipe (`--config FILE`);
    # the others (export_hf.py) are plain commands with positional arguments.
    # The code is in kzoo/recipes/; recipes/*.py are the scripts that run it.
    recipes = {p.stem for p in (ROOT / "kzoo" / "recipes").glob("*.py")
               if "run_recipe(" in p.read_text() or '"--config"' in p.read_text()}
    assert {"pretrain", "sft", "dpo", "reward", "generate"} <= recipes
    assert recipes <= {_recipe_of(p) for p in CONFIGS}, "a recipe without a config"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_header_and_name(path):
    first = path.read_text().splitlines()[0]
    match = HEADER.match(first)
    assert match, f"{path}: first line must be '# python recipes/NAME.py --config {path}'"
    assert match.group(2) == str(path.relative_to(ROOT))
    assert (ROOT / "recipes" / f"{match.group(1)}.py").is_file()
    size, *data, method = path.stem.split("_")
    assert data and method, f"{path.name}: expected <size>_<data>_<method>.yaml"
    assert f"{path.parent.name}_{size}" in list_presets(), f"{path.name}: unknown size {size!r}"


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text("\n\n".join(list(topics.values())[:6])[:20000], encoding="utf-8")
    return path


PRETRAIN_TINY = [
    "model.args={num_layers: 1, max_sequence_length: 32}", "train.block_size=16",
    "train.batch_size=4", "train.steps=2", "train.eval_interval=1", "train.val_batches=1",
    "train.warmup_steps=1", "train.verbose=0", "train.tensorboard=false",
    "train.jit_compile=false", "sample.max_new_tokens=4", "data.validation_split=null",
    "data.validation_fraction=0.2",
]


def _pretrain(path, run_dir, tiny_text):
    code = _load_recipe("pretrain").main(["--config", str(path), *_sets(
        [*PRETRAIN_TINY, f"run_dir={run_dir}", f"data.source={tiny_text}"])])
    assert code == 0
    assert (run_dir / "model.keras").is_file()


# conftest fixtures: skip when KZOO_TEST_DATA is unset, fail when it is set but the file is missing.
_FIXTURES = {"instruction-data.json": "instruction_data_path",
             "instruction-preference.json": "preference_data_path"}


def _slice(src, dst, n=24):
    dst.write_text(json.dumps(json.loads(src.read_text())[:n]))
    return dst


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_one_tiny_step(path, tmp_path, tiny_text, request):
    recipe = _recipe_of(path)
    run_dir = tmp_path / "run"
    if recipe == "pretrain":
        _pretrain(path, run_dir, tiny_text)
    elif recipe == "generate":
        pretrain_config = path.with_name(path.name.replace("_generate", "_pretrain"))
        _pretrain(pretrain_config, run_dir, tiny_text)
        module = _load_recipe("generate")
        out = io.StringIO()
        options = module.resolve_options(module.parse_args(
            ["--config", str(path), str(run_dir), "--max-new-tokens", "4"]))
        result = module.run(options, out=out)
        assert isinstance(result["text"], str) and out.getvalue()
    elif recipe in ("sft", "dpo", "reward", "kto", "orpo"):
        source = "instruction-data.json" if recipe == "sft" else "instruction-preference.json"
        data = _slice(request.getfixturevalue(_FIXTURES[source]), tmp_path / source)
        code = _load_recipe(recipe).main(["--config", str(path), *_sets([
            f"run_dir={run_dir}", f"data.path={data}", "model.init_from=null",
            "model.tokenizer=byte", "model.args={num_layers: 1}", "data.max_length=96",
            "data.template=plain", "data.validation_fraction=0.25", "train.epochs=1",
            "train.verbose=0", "train.jit_compile=false",
        ])])
        assert code == 0
        assert (run_dir / "metrics.json").is_file()
    elif recipe == "feedback_loop":
        code = _load_recipe(recipe).main(["--config", str(path), *_sets([
            f"run_dir={run_dir}", "loop.max_operand=6", "loop.lines_per_problem=8",
            "loop.pretrain_epochs=6", "loop.samples_per_prompt=8", "loop.pairs_per_prompt=1",
            "loop.eval_samples_per_prompt=2", "loop.rounds=1", "loop.dpo_epochs=1",
            "loop.control=false", "loop.num_show=1",
        ])])
        assert code == 0
        report = json.loads((run_dir / "report.json").read_text())
        tasks = (yaml.safe_load(path.read_text()).get("eval") or {}).get("tasks") or []
        assert set((report.get("eval") or {}).get("before") or {}) == set(tasks)
        for task, metrics in (report.get("eval") or {}).get("before", {}).items():
            # kzoo_sums_gen covers the loop's own max_operand unless told otherwise: 36 sums
            for value in (metrics["exact_match,none"], report["eval"]["after"][task][
                    "exact_match,none"]):
                assert abs(value * 36 - round(value * 36)) < 1e-9 and 0 <= value <= 1
            assert f"{task} exact_match" in (run_dir / "report.md").read_text()
    elif recipe in ("grpo", "rloo"):
        # The shipped configs score with a reward-model run folder: train a tiny one first.
        pairs = _slice(request.getfixturevalue(_FIXTURES["instruction-preference.json"]),
                       tmp_path / "pairs.json")
        prompts = _slice(request.getfixturevalue(_FIXTURES["instruction-data.json"]),
                         tmp_path / "prompts.json", n=12)
        reward_dir = tmp_path / "reward"
        assert _load_recipe("reward").main([
            "--config", str(path.with_name("baby_instruction_reward.yaml")), *_sets([
                f"run_dir={reward_dir}", f"data.path={pairs}", "model.init_from=null",
                "model.tokenizer=byte", "model.args={num_layers: 1}", "data.max_length=96",
                "data.validation_fraction=0.25", "train.epochs=1", "train.verbose=0",
                "train.jit_compile=false"])]) == 0
        code = _load_recipe(recipe).main(["--config", str(path), *_sets([
            f"run_dir={run_dir}", f"data.path={prompts}", "model.init_from=null",
            "model.tokenizer=byte", "model.args={num_layers: 1}",
            f"rewards=[{{reward: {reward_dir}, weight: 1.0}}, "
            "{reward: format_ends, weight: 0.1}]",
            "generation.num_generations=2", "generation.max_new_tokens=4",
            "generation.max_prompt_length=64", "generation.jit_compile=false",
            "train.steps=2", "train.batch_size=4", "train.eval_interval=1",
            "train.eval_prompts=2", "train.eval_samples=2", "train.verbose=0",
        ])])
        assert code == 0
        metrics = json.loads((run_dir / "metrics.json").read_text())
        held = min(metrics["split"]["held_out_prompts"], 2)
        assert len(metrics["history"]) == 2 and held >= 1
        assert metrics["held_out_after"]["samples"] == 2 * held
        assert (run_dir / "model.keras").is_file()
    else:
        pytest.fail(f"{path}: no tiny step known for recipe {recipe!r}; add one here")
