"""The `kzoo serve` command: bad arguments are one line and exit code 2; a served run folder
answers, and SIGTERM stops it with exit code 0."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from kzoo.cli.main import main
from tests.helpers import ROOT, one_error_line


@pytest.mark.parametrize("flags,words", [
    (["--port", "99999"], "--port 99999: must be in 0..65535"),
    (["--host", "0.0.0.0"], "--api-key"),
    (["--weights", "int4"], "--weights 'int4'"),
    (["--slots", "0"], "--slots 0"),
    (["--api-key", "a b"], "--api-key"),
    (["--timeout", "0"], "--timeout 0"),
])
def test_bad_arguments_are_one_line_and_exit_code_2(nano, capsys, flags, words):
    assert main(["serve", str(nano[2]), *flags]) == 2
    assert words in one_error_line(capsys)


def test_a_missing_model_and_an_unparsable_flag(capsys, tmp_path):
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert main(["serve", str(tmp_path), "--slots", "many"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_the_command_serves_and_sigterm_exits_0(nano):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "kzoo.cli.main", "serve", str(nano[2]), "--port", "0",
         "--slots", "2", "--model-name", "tiny"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # printed once it listens
        assert "kzoo serve:" in line and "/v1" in line, process.stderr.read()
        url = line.split(" on ")[1].split()[0]
        request = urllib.request.Request(url + "/completions", data=json.dumps(
            {"model": "tiny", "prompt": "hi", "max_tokens": 3}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert len(json.loads(response.read())["choices"]) == 1
        # a stream under way when SIGTERM comes is finished (then the process exits 0)
        request = urllib.request.Request(url + "/completions", data=json.dumps(
            {"prompt": "go", "max_tokens": 100, "stream": True}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.readline().startswith(b"data: ")
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            rest = response.read().decode()
        assert rest.rstrip().endswith("data: [DONE]")
        assert process.wait(30) == 0 and time.monotonic() - started < 30
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _run_folder(folder, vocab_size, tokenizer):
    import keras

    from kzoo.models import CausalLM

    keras.utils.set_random_seed(0)
    folder.mkdir(exist_ok=True)
    CausalLM.from_preset("gpt_nano", vocab_size=vocab_size, max_sequence_length=32).save(
        folder / "model.keras")
    tokenizer.save(folder / "tokenizer")
    return folder


def test_a_model_that_can_sample_ids_its_tokenizer_has_no_text_for_is_refused(tmp_path, capsys):
    # 300 ids against the byte tokenizer's 257: each request that drew one of ids 257..299
    # used to end in a 503 ("internal error in the model thread"), its neighbours' too
    from kzoo.serve import cli
    from kzoo.tokenizers import ByteTokenizer

    run = _run_folder(tmp_path, 300, ByteTokenizer())
    with pytest.raises(ValueError, match="300 ids") as caught:
        cli.load(cli.parse_args([str(run)]))
    assert "257" in str(caught.value) and "\n" not in str(caught.value)
    assert main(["serve", str(run)]) == 2
    line = one_error_line(capsys)
    assert "300" in line and "257" in line and "--tokenizer" in line


def test_padded_rows_past_a_tokenizer_that_decodes_them_are_served(tmp_path):
    # Real checkpoints (Qwen2) pad their embeddings past the tokenizer; a Hugging Face
    # tokenizer decodes those ids as no text, so the model is served.
    import tokenizers
    from tokenizers import models, pre_tokenizers

    from kzoo.serve import cli
    from kzoo.tokenizers import load_tokenizer

    tok = tokenizers.Tokenizer(models.WordLevel({f"w{i}": i for i in range(200)},
                                                unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (tmp_path / "hf").mkdir()
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    tokenizer = load_tokenizer(tmp_path / "hf")
    assert tokenizer.vocab_size == 200 and tokenizer.decode([255]) == ""
    run = _run_folder(tmp_path / "run", 256, tokenizer)
    model, loaded = cli.load(cli.parse_args([str(run)]))
    assert model.vocab_size == 256 and loaded.vocab_size == 200


def test_lora_adapters_are_served_merged_into_the_model(nano, tmp_path, capsys):
    import keras
    from keras import ops

    from kzoo.models import CausalLM
    from kzoo.models.lora import adapter_weights
    from kzoo.serve import cli

    model, _, run = nano
    tuned = keras.models.clone_model(model)
    tuned.set_weights(model.get_weights())
    tuned.enable_lora(rank=4, targets="all")
    rng = np.random.default_rng(0)
    for var in adapter_weights(tuned).values():  # B is zero when fresh: make them matter
        var.assign(rng.normal(scale=0.2, size=var.shape).astype("float32"))
    path = tuned.save_lora(tmp_path / "adapters.safetensors")
    ids = np.array([[5, 6, 7, 8]])
    want = ops.convert_to_numpy(tuned(ids))
    served, _ = cli.load(cli.parse_args([str(run), "--lora", str(path)]))
    assert served.lora_spec is None  # merged: the decoder reads plain kernels
    np.testing.assert_allclose(ops.convert_to_numpy(served(ids)), want, atol=1e-4)
    assert np.abs(ops.convert_to_numpy(model(ids)) - want).max() > 1e-2  # the adapters matter

    assert main(["serve", str(run), "--lora", str(tmp_path / "none.safetensors")]) == 2
    assert "--lora" in (line := one_error_line(capsys)) and "no such file" in line
    other = CausalLM.from_preset("gpt_baby", vocab_size=257)  # other widths: other shapes
    other.enable_lora(rank=4, targets="all")
    wrong = other.save_lora(tmp_path / "baby.safetensors")
    assert main(["serve", str(run), "--lora", str(wrong)]) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: --lora") and "shape" in line
