"""The `lora:` section and the memory levers (`train.gradient_accumulation_steps`,
`train.remat`) in the SFT, DPO and reward recipes, end to end on a slice of the real data."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.recipes.test_sft_dpo_reward_recipes import CONFIGS, TINY_MODEL, _recipe, _sets, _slice

LORA = ["lora.enabled=true", "lora.rank=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = os.environ.get("KZOO_TEST_DATA")
    if not root:
        pytest.skip("KZOO_TEST_DATA is unset")
    tmp = tmp_path_factory.mktemp("lora")
    return (tmp, _slice(Path(root) / "instruction-data.json", tmp / "sft.json"),
            _slice(Path(root) / "instruction-preference.json", tmp / "pref.json"))


def _weights(path):
    from kzoo.models.loading import load_model_file

    model = load_model_file(path, compile=False)
    return model, {v.path: np.asarray(v) for v in model.weights}


@pytest.fixture(scope="module")
def sft_lora(data):
    tmp, sft_data, _ = data
    start = tmp / "start"
    assert _recipe("sft").main(["--config", str(CONFIGS / "baby_instruction_sft.yaml"), *_sets(
        *TINY_MODEL, f"run_dir={start}", f"data.path={sft_data}")]) == 0
    run = tmp / "sft_lora"
    assert _recipe("sft").main(["--config", str(CONFIGS / "baby_instruction_sft.yaml"), *_sets(
        *TINY_MODEL, *LORA, f"run_dir={run}", f"data.path={sft_data}",
        f"model.init_from={start}", "train.learning_rate=0.01")]) == 0
    return start, run


def test_sft_with_lora_trains_only_the_adapters_and_saves_them_apart(sft_lora):
    start, run = sft_lora
    from kzoo.models.lora import read_lora_settings

    base, before = _weights(start / "model.keras")
    tuned, after = _weights(run / "model.keras")
    assert tuned.lora_spec is None  # a plain model: later steps load it like any other
    assert set(before) == set(after)
    kernels = {k for k in before if k.endswith("kernel") and ("attention" in k or "ffn" in k
                                                              or "feed" in k)}
    assert kernels, sorted(before)
    changed = {k for k in before if not np.allclose(before[k], after[k], atol=1e-7)}
    # Adapters fold into the projection kernels; embeddings, norms and biases stay the base's.
    assert changed and changed <= kernels, sorted(changed - kernels)
    adapters = run / "adapters.safetensors"
    assert adapters.is_file()
    assert adapters.stat().st_size < 0.25 * (run / "model.keras").stat().st_size
    assert read_lora_settings(adapters)["rank"] == 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_response_loss_after"] < metrics["val_response_loss_before"]


def test_dpo_with_lora_uses_the_network_without_adapters_as_reference(data, sft_lora):
    tmp, _, pref_data = data
    start, _ = sft_lora
    run = tmp / "dpo_lora"
    assert _recipe("dpo").main(["--config", str(CONFIGS / "baby_instruction_dpo.yaml"), *_sets(
        *TINY_MODEL, *LORA, f"run_dir={run}", f"data.path={pref_data}",
        f"model.init_from={start}", "dpo.reference=auto", "train.learning_rate=0.01")]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    # Adapters start at zero: the reference pass and the policy agree, the loss is ln 2.
    assert abs(metrics["held_out_before"]["loss"] - np.log(2)) < 1e-5
    assert metrics["held_out_after"]["loss"] != metrics["held_out_before"]["loss"]
    assert (run / "adapters.safetensors").is_file()
    saved = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    assert saved["lora"]["enabled"] is True and saved["dpo"]["reference"] == "auto"


def test_reward_with_lora_and_int8_base_trains_head_and_adapters(data, sft_lora):
    tmp, _, pref_data = data
    start, _ = sft_lora
    run = tmp / "reward_lora"
    assert _recipe("reward").main(["--config", str(CONFIGS / "baby_instruction_reward.yaml"),
                                   *_sets(*TINY_MODEL, *LORA, "lora.quantize=int8",
                                          f"run_dir={run}", f"data.path={pref_data}",
                                          f"model.init_from={start}")]) == 0
    from kzoo.models.loading import load_model_file

    model = load_model_file(run / "model.keras", compile=False)
    kernel = model.backbone.weights[0]
    assert "int" not in str(kernel.dtype)  # exported in float
    assert (run / "adapters.safetensors").is_file()


@pytest.mark.parametrize("extra", [["train.gradient_accumulation_steps=2"], ["train.remat=true"]])
def test_memory_levers_run_and_are_recorded(data, extra):
    tmp, sft_data, _ = data
    run = tmp / ("sft_" + extra[0].split(".")[1].split("=")[0])
    assert _recipe("sft").main(["--config", str(CONFIGS / "baby_instruction_sft.yaml"), *_sets(
        *TINY_MODEL, *extra, f"run_dir={run}", f"data.path={sft_data}")]) == 0
    saved = __import__("yaml").safe_load((run / "config.yaml").read_text())
    key, value = extra[0].split(".")[1].split("=")
    assert str(saved["train"][key]).lower() == value


@pytest.mark.parametrize("override, message", [
    ("dpo.reference=adapters_off", "needs lora.enabled"),
    ("lora.rank=0", "lora.rank"),
    ("lora.targets=[nope]", "lora.targets"),
    ("train.gradient_accumulation_steps=0", "gradient_accumulation_steps"),
])
def test_bad_lora_settings_are_one_line_exit_2(data, capsys, override, message):
    tmp, _, pref_data = data
    run = tmp / "never"
    code = _recipe("dpo").main(["--config", str(CONFIGS / "baby_instruction_dpo.yaml"), *_sets(
        *TINY_MODEL, f"run_dir={run}", f"data.path={pref_data}", override)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not run.exists()
