"""The SFT -> DPO and reward recipes end to end on a slice of the real instruction data."""

import json
from pathlib import Path

import pytest

from tests.helpers import load_recipe

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes/configs/gpt"
TINY_MODEL = ["model.preset=gpt_nano", "model.args={num_layers: 1}", "data.template=plain",
              "data.max_length=96", "data.validation_fraction=0.25", "train.verbose=0",
              "train.epochs=1", "train.jit_compile=false"]


def _recipe(name):
    return load_recipe(name)


def _slice(src: Path, dst: Path, n: int = 48) -> Path:
    dst.write_text(json.dumps(json.loads(src.read_text())[:n]))
    return dst


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    import os

    root = os.environ.get("KZOO_TEST_DATA")
    if not root:
        pytest.skip("KZOO_TEST_DATA is unset")
    tmp = tmp_path_factory.mktemp("pref")
    sft_data = _slice(Path(root) / "instruction-data.json", tmp / "sft.json")
    pref_data = _slice(Path(root) / "instruction-preference.json", tmp / "pref.json")
    code = _recipe("sft").main([
        "--config", str(CONFIGS / "baby_instruction_sft.yaml"), *sum(
            (["--set", s] for s in [*TINY_MODEL, f"run_dir={tmp / 'sft'}",
                                    f"data.path={sft_data}"]), []),
    ])
    assert code == 0
    return tmp, pref_data


def _sets(*items):
    return sum((["--set", s] for s in items), [])


def test_sft_run_folder(sft_run):
    tmp, _ = sft_run
    metrics = json.loads((tmp / "sft/metrics.json").read_text())
    assert (tmp / "sft/model.keras").is_file() and (tmp / "sft/tokenizer/tokenizer.json").is_file()
    assert metrics["split"]["train"] + metrics["split"]["validation"] == 48
    assert metrics["val_response_loss_after"] < metrics["val_response_loss_before"]


@pytest.mark.parametrize("reference", ["precomputed", "copy"])
def test_dpo_after_sft(sft_run, reference):
    tmp, pref_data = sft_run
    run_dir = tmp / f"dpo_{reference}"
    code = _recipe("dpo").main(["--config", str(CONFIGS / "baby_instruction_dpo.yaml"), *_sets(
        *TINY_MODEL, f"run_dir={run_dir}", f"data.path={pref_data}",
        f"model.init_from={tmp / 'sft/model.keras'}", f"dpo.reference={reference}")])
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "model.keras").is_file() and (run_dir / "policy.weights.h5").is_file()
    # The starting model is the reference: held-out loss is ln 2 before any step.
    assert abs(metrics["held_out_before"]["loss"] - 0.693147) < 1e-4
    assert metrics["bad_pairs"]["read"] == 48
    assert metrics["split"]["train_pairs"] + metrics["split"]["validation_pairs"] == \
        metrics["bad_pairs"]["kept"] - metrics["bad_pairs"]["prompt_too_long"]
    for key in ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy",
                "rewards/margin", "logps/chosen", "logps/rejected", "val_rewards/accuracy"]:
        assert key in metrics["history"], key


def test_dpo_nan_stops_and_keeps_nothing_bad(sft_run, capsys):
    tmp, pref_data = sft_run
    run_dir = tmp / "dpo_nan"
    code = _recipe("dpo").main(["--config", str(CONFIGS / "baby_instruction_dpo.yaml"), *_sets(
        *TINY_MODEL, f"run_dir={run_dir}", f"data.path={pref_data}",
        f"model.init_from={tmp / 'sft/model.keras'}", "train.learning_rate=1e30",
        "train.epochs=2")])
    assert code == 3
    err = capsys.readouterr().err
    assert "diverged" in err and f"are in {run_dir / 'policy.weights.h5'}" in err
    assert (run_dir / "policy.weights.h5").is_file()  # what the message promises
    assert not (run_dir / "model.keras").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["stopped_on_nan"] is not None


def test_reward_recipe(sft_run):
    tmp, pref_data = sft_run
    run_dir = tmp / "reward"
    code = _recipe("reward").main(["--config", str(CONFIGS / "baby_instruction_reward.yaml"),
                                   *_sets(*TINY_MODEL, f"run_dir={run_dir}",
                                          f"data.path={pref_data}",
                                          f"model.init_from={tmp / 'sft/model.keras'}")])
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["held_out_after"]["pairwise_accuracy"] <= 1.0
    assert "val_pairwise_accuracy" in metrics["history"]
    import keras

    import kzoo  # noqa: F401
    from kzoo.alignment.reward import RewardModel

    loaded = keras.models.load_model(run_dir / "model.keras")
    assert isinstance(loaded, RewardModel)
    # compile() is restored on load: the loaded model evaluates with its own loss and metric
    assert loaded.loss.__class__.__name__ == "BradleyTerryLoss"


@pytest.mark.parametrize("override, match", [
    ("dpo.loss=dpo2", "Valid names"),
    ("dpo.reference=twin", "dpo.reference must be"),
    ("dpo.betta=0.1", "unknown key 'dpo.betta'"),
])
def test_dpo_bad_config_is_exit_2(tmp_path, capsys, override, match):
    code = _recipe("dpo").main(["--config", str(CONFIGS / "baby_instruction_dpo.yaml"), *_sets(
        *TINY_MODEL, f"run_dir={tmp_path}", "model.init_from=null", override)])
    assert code == 2
    assert match in capsys.readouterr().err


def test_dpo_metrics_csv_every_interval(sft_run):
    from kzoo.viz import read_metrics

    tmp, pref_data = sft_run
    run_dir = tmp / "dpo_csv"
    code = _recipe("dpo").main(["--config", str(CONFIGS / "nano_preference_dpo.yaml"), *_sets(
        *TINY_MODEL, f"run_dir={run_dir}", f"data.path={pref_data}",
        f"model.init_from={tmp / 'sft/model.keras'}", "train.eval_interval=2")])
    assert code == 0
    columns = read_metrics(run_dir / "metrics.csv")
    assert columns["step"][:2] == [2.0, 4.0]
    for key in ("rewards/margin", "rewards/accuracy", "val_rewards/margin",
                "val_rewards/accuracy", "loss", "val_loss"):
        assert len(columns[key]) == len(columns["step"]), key
