"""The issue's user mistakes, one by one, through the recipes' command lines: exit code 2, one
`error: ...` line on stderr naming the file, and no run folder left behind."""

import functools
import json
import zipfile
from pathlib import Path

import pytest

from kzoo.models import CausalLM
from kzoo.tokenizers import ByteTokenizer
from tests.helpers import load_recipe, one_error_line, sets

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes/configs/gpt"
FINE_TUNE = ["model.preset=gpt_nano", "model.args={num_layers: 1}", "model.init_from=null",
             "data.template=plain", "data.max_length=32", "data.validation_fraction=0.5",
             "train.epochs=1", "train.verbose=0", "train.jit_compile=false"]
PAIRS = [{"prompt": f"say {i}", "chosen": f"{i}", "rejected": f"{i + 1}"} for i in range(8)]


@functools.cache
def recipe(name):
    return load_recipe(name)




@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good model file and its broken variants, a good and a damaged tokenizer folder."""
    root = tmp_path_factory.mktemp("files")
    good = root / "good.keras"
    CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=32).save(good)
    (root / "truncated.keras").write_bytes(good.read_bytes()[:1000])
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(root / "unknown.keras", "w") as out:
        for name in src.namelist():
            data = src.read(name)
            if name == "config.json":
                config = json.loads(data)
                config.update(class_name="Backdoor", registered_name="evil>Backdoor")
                data = json.dumps(config).encode()
            out.writestr(name, data)
    ByteTokenizer().save(root / "tokenizer")
    damaged = ByteTokenizer().save(root / "damaged_tokenizer")
    (damaged / "tokenizer.json").write_text('{"kind": "byte", "config": ')
    text = root / "tiny.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    return root


def test_pretrain_from_a_truncated_model_file(files, tmp_path, capsys):
    code = recipe("pretrain").main([
        "--config", str(CONFIGS / "nano_pydocs_pretrain.yaml"), *sets(
            f"run_dir={tmp_path / 'run'}", f"data.source={files / 'tiny.txt'}",
            "tokenizer.kind=byte", "tokenizer.vocab_size=null", "train.block_size=16",
            "train.batch_size=2", "train.steps=1", "train.eval_interval=1",
            "train.val_batches=1", f"model.init_from={files / 'truncated.keras'}")])
    assert code == 2
    line = one_error_line(capsys)
    assert f"{files / 'truncated.keras'} is truncated or is not a .keras file" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["sft", "dpo", "reward"])
def test_fine_tuning_from_a_file_naming_an_unknown_class(name, files, tmp_path, capsys):
    config = {"sft": "baby_instruction_sft.yaml", "dpo": "baby_instruction_dpo.yaml",
              "reward": "baby_instruction_reward.yaml"}[name]
    code = recipe(name).main(["--config", str(CONFIGS / config), *sets(
        *FINE_TUNE, f"run_dir={tmp_path / 'run'}", f"model.init_from={files / 'unknown.keras'}")])
    assert code == 2
    line = one_error_line(capsys)
    assert f"{files / 'unknown.keras'} names a class that does not exist here: 'Backdoor'" in line
    assert not (tmp_path / "run").exists()


def test_dpo_with_a_damaged_tokenizer_folder(files, tmp_path, capsys):
    code = recipe("dpo").main(["--config", str(CONFIGS / "baby_instruction_dpo.yaml"), *sets(
        *FINE_TUNE, f"run_dir={tmp_path / 'run'}",
        f"model.tokenizer={files / 'damaged_tokenizer'}")])
    assert code == 2
    line = one_error_line(capsys)
    assert f"{files / 'damaged_tokenizer' / 'tokenizer.json'} is not a kzoo tokenizer file" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["dpo", "reward"])
@pytest.mark.parametrize("records, extra, message", [
    ([], [], "holds no preference pairs (0 records)"),
    ([{"prompt": "a", "chosen": "x", "rejected": "x"}] * 3, [],
     "no usable preference pairs: all 3 records were skipped (3 with chosen == rejected, "
     "0 with an empty response)"),
    (PAIRS, ["data.max_length=4"], "no training pairs left: 0 went to validation, 8 skipped "
                                   "because the prompt leaves no room for a response in "
                                   "max_length=4 (set data.max_prompt_length or raise "
                                   "data.max_length)"),
], ids=["empty", "all-identical", "all-too-long"])
def test_no_usable_preference_pairs(name, records, extra, message, tmp_path, capsys):
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(records))
    config = CONFIGS / f"baby_instruction_{name}.yaml"
    code = recipe(name).main(["--config", str(config), *sets(
        *FINE_TUNE, *extra, f"run_dir={tmp_path / 'run'}", f"data.path={data}")])
    assert code == 2
    assert one_error_line(capsys) == f"error: {data}: {message}".replace(
        f"{data}: holds", f"{data} holds")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def run_folder(files, tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / "model.keras").write_bytes((files / "good.keras").read_bytes())
    ByteTokenizer().save(root / "tokenizer")
    return root


@pytest.mark.parametrize("damage, message", [
    (lambda root, files: (root / "model.keras").write_bytes(
        (files / "truncated.keras").read_bytes()), "model.keras is truncated or is not a .keras"),
    (lambda root, files: (root / "model.keras").write_bytes(
        (files / "unknown.keras").read_bytes()), "model.keras names a class that does not exist"),
    (lambda root, files: (root / "tokenizer" / "tokenizer.json").write_text("[]"),
     "tokenizer.json is not a kzoo tokenizer file"),
])
def test_generate_from_a_damaged_run_folder(run_folder, files, damage, message, capsys):
    damage(run_folder, files)
    assert recipe("generate").main([str(run_folder), "--max-new-tokens", "2"]) == 2
    assert message in one_error_line(capsys)


@pytest.mark.parametrize("text, message", [
    ("prompt: [\n", "not valid YAML at line 2, column 1"),
    ("prompt: hi\n\ttemperature: 1\n", "not valid YAML at line 2"),
    ("max_new_tokens: -1\n", "key 'max_new_tokens' must be > 0, got -1"),
    ("max_new_tokens: 0\n", "key 'max_new_tokens' must be > 0, got 0"),
    ("temperature: .nan\n", "key 'temperature' must be >= 0 and finite, got nan"),
    ("temperatures: [1, 0]\n", "key 'temperatures[1]' must be > 0 and finite, got 0.0"),
    ("max_new_tokens: many\n", "key 'max_new_tokens' expects int, got str 'many'"),
])
def test_generate_config_mistakes(run_folder, tmp_path, text, message, capsys):
    config = tmp_path / "generate.yaml"
    config.write_text(text)
    assert recipe("generate").main(["--config", str(config), str(run_folder)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {config}: ") and message in line


def test_generate_temperature_zero_is_greedy(run_folder, capsys):
    assert recipe("generate").main([str(run_folder), "--temperature", "0", "--prompt", "ab",
                                    "--max-new-tokens", "3", "--sampler", "random"]) == 0
    greedy = capsys.readouterr().out
    assert recipe("generate").main([str(run_folder), "--prompt", "ab", "--max-new-tokens", "3",
                                    "--sampler", "greedy"]) == 0
    assert capsys.readouterr().out == greedy
