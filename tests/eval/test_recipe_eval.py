"""The recipes' `eval:` section: lm-eval tasks scored before and after training into
metrics.json; a wrong task stops the recipe before any work."""

import json
from pathlib import Path

import pytest

from kzoo.recipes import load_recipe
from tests.conftest import shared_data_file
from tests.helpers import sets

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes/configs/gpt"
TINY = ["model.preset=gpt_nano", "model.args={num_layers: 1}", "data.template=plain",
        "data.max_length=96", "data.validation_fraction=0.25", "train.verbose=0",
        "train.epochs=1", "train.jit_compile=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe_eval")
    for name in ("instruction-data.json", "instruction-preference.json"):
        (tmp / name).write_text(json.dumps(json.loads(shared_data_file(name).read_text())[:32]))
    return tmp


def test_sft_scores_the_tasks_before_and_after_into_metrics_json(data):
    run = data / "sft"
    code = load_recipe("sft").main(["--config", str(CONFIGS / "baby_instruction_sft.yaml"),
                                    *sets(*TINY, f"run_dir={run}",
                                          f"data.path={data / 'instruction-data.json'}",
                                          "eval.tasks=[kzoo_arith_mc]", "eval.limit=4",
                                          "eval.batch_size=4")])
    assert code == 0
    found = json.loads((run / "metrics.json").read_text())["eval"]
    before, after = found["before"]["kzoo_arith_mc"], found["after"]["kzoo_arith_mc"]
    assert {"acc,none", "acc_norm,none", "acc_centered,none"} <= set(before)
    assert found["change"]["kzoo_arith_mc"]["acc,none"] == pytest.approx(
        after["acc,none"] - before["acc,none"])
    assert 0.0 <= before["acc,none"] <= 1.0


def test_an_unknown_task_stops_the_recipe_before_any_work(data, capsys):
    run = data / "dpo"
    code = load_recipe("dpo").main(["--config", str(CONFIGS / "baby_instruction_dpo.yaml"),
                                    *sets(*TINY, f"run_dir={run}", "model.init_from=null",
                                          f"data.path={data / 'instruction-preference.json'}",
                                          "eval.tasks=[kzoo_arith_mcq]")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "unknown task 'kzoo_arith_mcq'; close names: kzoo_arith_mc" in err[-1]
    assert not run.exists()


def test_pretraining_scores_step_0_and_the_end(tmp_path):
    from kzoo.training import PretrainConfig, load_config, pretrain

    config = load_config(ROOT / "recipes/configs/gpt/nano_pydocs_pretrain.yaml", PretrainConfig, [
        "tokenizer.kind=char", "tokenizer.vocab_size=null", "model.args={max_sequence_length: 64}",
        "train.block_size=32", "train.batch_size=4", "train.steps=30", "train.eval_interval=15",
        "train.val_batches=2", "train.warmup_steps=2", "train.verbose=0",
        "train.tensorboard=false", "sample.max_new_tokens=4", "sample.every_interval=false",
        f"run_dir={tmp_path / 'run'}", "eval.tasks=[kzoo_pydocs_ppl]", "eval.limit=2"])
    result = pretrain(config)
    saved = json.loads((tmp_path / "run/metrics.json").read_text())["eval"]
    assert saved == result["eval"]
    before = saved["before"]["kzoo_pydocs_ppl"]["bits_per_byte,none"]
    after = saved["after"]["kzoo_pydocs_ppl"]["bits_per_byte,none"]
    assert after < before  # 30 steps on the pydocs text: the held-out pydocs get likelier
