"""The KTO recipe end to end after a tiny SFT run, on a slice of the real preference pairs
(unpaired by the recipe) and on files of unpaired records; its bad-input exits."""

import json
import os
import re
from pathlib import Path

import pytest

from kzoo.data.unpaired import unpair
from tests.helpers import load_recipe

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "recipes/configs/gpt/baby_instruction_kto.yaml"
TINY = ["model.preset=gpt_nano", "model.args={num_layers: 1}", "data.template=plain",
        "data.max_length=96", "data.validation_fraction=0.25", "train.verbose=0",
        "train.epochs=1", "train.batch_size=8", "train.jit_compile=false"]


def _sets(*items):
    return sum((["--set", s] for s in items), [])


def _kto(*overrides):
    return load_recipe("kto").main(["--config", str(CONFIG), *_sets(*TINY, *overrides)])


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = os.environ.get("KZOO_TEST_DATA")
    if not root:
        pytest.skip("KZOO_TEST_DATA is unset")
    tmp = tmp_path_factory.mktemp("kto")
    sft = tmp / "sft.json"
    sft.write_text(json.dumps(json.loads((Path(root) / "instruction-data.json").read_text())[:48]))
    pairs = json.loads((Path(root) / "instruction-preference.json").read_text())[:48]
    (tmp / "pairs.json").write_text(json.dumps(pairs))
    code = load_recipe("sft").main([
        "--config", str(ROOT / "recipes/configs/gpt/baby_instruction_sft.yaml"),
        *_sets(*TINY, f"run_dir={tmp / 'sft'}", f"data.path={sft}")])
    assert code == 0
    return tmp, pairs


@pytest.mark.parametrize("reference", ["precomputed", "copy"])
def test_kto_on_unpaired_pairs_after_sft(sft_run, reference):
    tmp, _ = sft_run
    run_dir = tmp / f"kto_{reference}"
    code = _kto(f"run_dir={run_dir}", f"data.path={tmp / 'pairs.json'}",
                f"model.init_from={tmp / 'sft/model.keras'}", f"kto.reference={reference}",
                "kto.undesirable_weight=1.5")
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "model.keras").is_file() and (run_dir / "policy.weights.h5").is_file()
    before, after = metrics["held_out_before"], metrics["held_out_after"]
    # The starting model is the reference: every log-ratio is 0, each loss 0.5 x its weight,
    # and no pair's chosen reward is strictly above its rejected one's.
    share_up = 0.5  # unpaired pairs: as many thumbs up as down
    assert before["loss"] == pytest.approx(0.5 * share_up + 0.75 * (1 - share_up), abs=1e-5)
    assert before["kl"] == 0.0 and before["pairs/rewards/accuracy"] == 0.0
    assert 0.0 <= after["pairs/rewards/accuracy"] <= 1.0 and after["loss"] != before["loss"]
    split, data = metrics["split"], metrics["data"]
    assert split["validation_records"] == 2 * split["validation_pairs"]
    assert split["train_records"] + split["validation_records"] == 2 * data["kept"] - \
        data["prompt_too_long"]
    assert data["train_labels"]["desirable"] == data["train_labels"]["undesirable"]
    for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen",
                "logps/rejected", "val_loss", "val_kl"):
        assert key in metrics["history"], key


def test_kto_with_lora_adapters_off(sft_run):
    tmp, _ = sft_run
    run_dir = tmp / "kto_lora"
    code = _kto(f"run_dir={run_dir}", f"data.path={tmp / 'pairs.json'}",
                f"model.init_from={tmp / 'sft/model.keras'}", "kto.reference=auto",
                "lora.enabled=true", "lora.rank=2", "train.learning_rate=0.001")
    assert code == 0
    assert (run_dir / "adapters.safetensors").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["held_out_after"]["pairs/rewards/margin"] != 0.0


def test_kto_on_a_file_of_unpaired_records(sft_run):
    tmp, pairs = sft_run
    records = [{"prompt": p["instruction"] + "\n" + p["input"], "completion": p[key],
                "label": key == "chosen"} for p in pairs for key in ("chosen", "rejected")]
    path = tmp / "feedback.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    run_dir = tmp / "kto_file"
    code = _kto(f"run_dir={run_dir}", f"data.path={path}", "data.unpair=false",
                "data.template=raw", f"model.init_from={tmp / 'sft/model.keras'}")
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # pair_up finds the held-out prompts' up/down completions again.
    assert metrics["split"]["validation_pairs"] == metrics["split"]["validation_records"] // 2
    assert "pairs/rewards/accuracy" in metrics["held_out_after"]


def test_one_sided_labels_warn_and_train(sft_run):
    tmp, pairs = sft_run
    path = tmp / "ups.json"
    path.write_text(json.dumps([{**r, "prompt": r["instruction"]} for r in unpair(pairs)
                                if r["label"]][:40]))
    run_dir = tmp / "kto_ups"
    with pytest.warns(UserWarning, match="label true .thumbs up.: KTO trains"):
        code = _kto(f"run_dir={run_dir}", f"data.path={path}", "data.unpair=false",
                    f"model.init_from={tmp / 'sft/model.keras'}")
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "no undesirable examples" in metrics["weight_advice"]
    assert "pairs/rewards/accuracy" not in metrics["held_out_after"]  # no held-out pair


@pytest.mark.parametrize("content, overrides, match", [
    ([], [], r"holds no preference pairs \(0 records\)"),
    ([], ["data.unpair=false"], r"holds no unpaired records \(0 records\)"),
    ([{"prompt": "Q", "completion": "A", "label": "yes"}], ["data.unpair=false"],
     r"d.json record 0: field 'label' must be a bool"),
    ([{"prompt": "Q", "label": True}], ["data.unpair=false"],
     r"d.json record 0: missing field\(s\) \['completion'\]"),
    ([{"prompt": "Q", "chosen": "A", "rejected": "B"}], ["data.unpair=false"],
     "set data.unpair: true"),
    ([{"prompt": "Q", "chosen": "A", "rejected": "B"}], ["train.batch_size=1"],
     r"train.batch_size=1: KTO's KL estimate .* set train.batch_size >= 2, or "
     "kto.loss_type=apo_zero_unpaired"),
    ([{"prompt": "Q", "chosen": "A", "rejected": "B"}], ["kto.loss_type=dpo"],
     r"Unknown unpaired \(KTO\) loss: 'dpo'. Valid names"),
    ([{"prompt": "Q", "chosen": "A", "rejected": "B"}], ["kto.reference=twin"],
     "kto.reference must be one of"),
    ([{"prompt": "Q", "chosen": "A", "rejected": "B"}], ["kto.betta=1"], "unknown key"),
    ([{"prompt": "Q", "chosen": "A", "rejected": "B"}], ["data.validation_fraction=0.5"],
     r"record\(s\) left .* KTO needs at least 2"),
])
def test_bad_input_is_exit_2(tmp_path, capsys, content, overrides, match):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(content))
    code = _kto(f"run_dir={tmp_path / 'run'}", f"data.path={path}", "model.init_from=null",
                "model.tokenizer=byte", *overrides)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(match, err), err
    assert not (tmp_path / "run").exists()  # a failed start leaves nothing behind
