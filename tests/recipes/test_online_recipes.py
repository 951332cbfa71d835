"""The GRPO and RLOO recipes end to end on tiny models, and their bad inputs in one line each."""

import json
from pathlib import Path

import pytest

from tests.helpers import load_recipe, one_error_line, sets

ROOT = Path(__file__).resolve().parents[2]
REWARD_FILE = ROOT / "recipes" / "rewards" / "arithmetic.py"


@pytest.fixture
def sums(tmp_path):
    path = tmp_path / "sums.jsonl"
    rows = [{"prompt": f"{a:02d}+{b:02d}=", "answer": f"{a + b:02d}"}
            for a in range(4) for b in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny(run_dir, data, *extra):
    return sets(f"run_dir={run_dir}", f"data.path={data}", "data.template=raw",
                "model.init_from=null",
                "model.preset=gpt_nano", "model.tokenizer=byte",
                "model.args={num_layers: 1, hidden_dim: 16, num_heads: 2, intermediate_dim: 32}",
                f"rewards=[{REWARD_FILE}:correct, {{reward: format_ends, weight: 0.1}}]",
                "generation.num_generations=2", "generation.max_new_tokens=3",
                "generation.max_prompt_length=8", "generation.jit_compile=false",
                "train.steps=3", "train.batch_size=4", "train.eval_interval=2",
                "train.eval_prompts=2", "train.eval_samples=2", "train.verbose=0",
                "train.learning_rate=1e-3", *extra)


@pytest.mark.parametrize("recipe", ["grpo", "rloo"])
def test_a_run_writes_its_folder_and_logs_every_batch(recipe, tmp_path, sums, capsys):
    run_dir = tmp_path / "run"
    extra = ["grpo.num_iterations=2", "grpo.beta=0.05"] if recipe == "grpo" else []
    code = load_recipe(recipe).main(["--config", str(
        ROOT / f"recipes/configs/gpt/baby_instruction_{recipe}.yaml"),
        *tiny(run_dir, sums, *extra)])
    assert code == 0, capsys.readouterr().err
    for name in ("config.yaml", "model.keras", "metrics.csv", "metrics.json", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    header = (run_dir / "config.yaml").read_text().splitlines()[0]
    assert header == f"# kzoo {recipe} --config {run_dir / 'config.yaml'}"  # reruns this run
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert "held_out/reward" in lines[1] and "held_out/reward" not in lines[0]
    assert {"rewards/correct/mean", "rewards/format_ends/mean", "kl",
            "generation_share"} <= set(lines[0])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["rewards"] == ["correct", "format_ends"]
    assert 0 < metrics["timing"]["generation_share"] < 1
    assert "held-out mean reward" in capsys.readouterr().out


def test_equal_rewards_everywhere_warn_no_learning_signal(tmp_path, sums, capsys):
    const = tmp_path / "const.py"
    const.write_text("def same(prompts, completions, **kwargs):\n"
                     "    return [1.0] * len(completions)\n")
    code = load_recipe("grpo").main(["--config", str(
        ROOT / "recipes/configs/gpt/baby_instruction_grpo.yaml"), *tiny(
        tmp_path / "run", sums, f"rewards=[{const}:same]", "grpo.zero_std_warn_steps=2")])
    out = capsys.readouterr()
    assert code == 0
    assert (out.out + out.err).count("no learning signal") == 1


@pytest.mark.parametrize("recipe, override, match", [
    ("grpo", "generation.num_generations=1", "needs a group of at least 2"),
    ("rloo", "generation.num_generations=1", "needs a group of at least 2"),
    ("grpo", "train.batch_size=5", "set batch_size to 4 or 6"),
    ("grpo", "grpo.scale_rewards=mean", "scale_rewards must be one of"),
    ("grpo", "grpo.reference=none", None),  # beta 0: no reference is fine
    ("grpo", "grpo.beta=0.1", None),
    ("rloo", "rloo.reference=none", "need a reference"),
    ("grpo", "grpo.reference=adapters_off", "needs lora.enabled"),
    ("grpo", "rewards=[]", "rewards is empty"),
    ("grpo", "rewards=[nope.py:f]", "nope.py"),
    ("grpo", "rewards=[{reward: format_ends, size: 2}]", "unknown key 'size'"),
])
def test_bad_settings_are_one_line(recipe, override, match, tmp_path, sums, capsys):
    run_dir = tmp_path / "run"
    code = load_recipe(recipe).main(["--config", str(
        ROOT / f"recipes/configs/gpt/baby_instruction_{recipe}.yaml"),
        *tiny(run_dir, sums, "train.steps=1", override)])
    if match is None:
        assert code == 0
        return
    assert code == 2
    assert match in one_error_line(capsys)
    assert not run_dir.exists()


def test_an_empty_prompt_file_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code = load_recipe("grpo").main(["--config", str(
        ROOT / "recipes/configs/gpt/baby_instruction_grpo.yaml"), *tiny(tmp_path / "run", empty)])
    assert code == 2
    line = one_error_line(capsys)
    assert "empty.jsonl" in line and "no prompts" in line
    assert not (tmp_path / "run").exists()


def test_a_reward_model_with_another_tokenizer_is_refused(tmp_path, sums, capsys):
    """A reward-model run folder trained with a char tokenizer cannot score a byte policy."""
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"prompt": f"{a}+{a}=", "chosen": f"{2 * a}", "rejected": "0"}
                                 for a in range(1, 30)]))
    reward_dir = tmp_path / "reward"
    char = tmp_path / "char_tok"
    from kzoo.tokenizers import CharTokenizer

    CharTokenizer("0123456789+=").save(char)
    assert load_recipe("reward").main(["--config", str(
        ROOT / "recipes/configs/gpt/baby_instruction_reward.yaml"), *sets(
        f"run_dir={reward_dir}", f"data.path={pairs}", "data.template=raw",
        "model.init_from=null", f"model.tokenizer={char}", "model.preset=gpt_nano",
        "model.args={num_layers: 1, hidden_dim: 16, num_heads: 2, intermediate_dim: 32}",
        "data.max_length=16", "data.validation_fraction=0.3", "train.epochs=1",
        "train.verbose=0", "train.jit_compile=false")]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "run"
    code = load_recipe("grpo").main(["--config", str(
        ROOT / "recipes/configs/gpt/baby_instruction_grpo.yaml"), *tiny(
        run_dir, sums, f"rewards=[{reward_dir}]")])
    assert code == 2
    line = one_error_line(capsys)
    assert "tokenizer" in line and str(reward_dir.name) in line
    assert not run_dir.exists()
