"""Recipes on real model folders, offline: SFT from a Hugging Face folder, DPO from that run
folder alone, export back to Hugging Face (checked with transformers), generate on a Hugging
Face folder and on keras-hub presets, and the bad inputs in one line each."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import load_module, one_error_line, sets

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from kzoo.models import CausalLM  # noqa: E402
from kzoo.models.loading import load_model_file  # noqa: E402
from kzoo.tokenizers import ByteTokenizer, HFTokenizer, check_vocab, load_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes/configs/gpt"
TINY = ["data.template=plain", "data.max_length=64", "data.validation_fraction=0.25",
        "train.verbose=0", "train.epochs=1", "train.batch_size=4", "train.jit_compile=false"]
MODEL_VOCAB, TOKENIZER_VOCAB = 320, 300  # a padded vocabulary, as in Qwen2 or SmolLM
WORDS = "the cat sat on a mat and the dog ran to it while birds sang over green hills".split()
TEXTS = ["the cat sat on the mat", "  a dog ran, the birds sang!  ", "green hills\nover it",
         "unseen words: zebra, 42 ünï"]


def _module(name, path):
    return load_module(path, name)


# tests/interop/conftest.py builds the tiny transformers checkpoints (not importable by name).
interop = _module("interop_checkpoints", ROOT / "tests/interop/conftest.py")


def recipe(name):
    return _module(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")




def _sentence(i):
    return " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(5))


def _trained_bpe():
    from tokenizers import decoders, models, pre_tokenizers, trainers

    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([_sentence(i) for i in range(40)] * 5, trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert bpe.get_vocab_size() == TOKENIZER_VOCAB
    return bpe


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A Hugging Face Llama folder (random weights, 320 embedding rows, a 300-id tokenizer
    saved by transformers) and tiny SFT and preference data files."""
    root = tmp_path_factory.mktemp("real")
    interop.make_checkpoint(root / "hf", "llama", vocab_size=MODEL_VOCAB,
                            max_position_embeddings=128)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=_trained_bpe(), eos_token="<|endoftext|>").save_pretrained(root / "hf")
    (root / "sft.json").write_text(json.dumps(
        [{"instruction": _sentence(i), "input": "", "output": _sentence(i + 7)}
         for i in range(16)]))
    (root / "pref.json").write_text(json.dumps(
        [{"prompt": f"{_sentence(i)} {i}", "chosen": _sentence(i + 1),
          "rejected": _sentence(i + 2)} for i in range(24)]))
    return root


@pytest.fixture(scope="module")
def sft_run(root):
    code = recipe("sft").main(["--config", str(CONFIGS / "baby_instruction_sft.yaml"), *sets(
        *TINY, f"run_dir={root / 'sft'}", f"data.path={root / 'sft.json'}",
        f"model.init_from={root / 'hf'}", "model.tokenizer=auto")])
    assert code == 0
    return root / "sft"


@pytest.fixture(scope="module")
def dpo_run(root, sft_run):
    # Only the SFT run folder: its model.keras and its tokenizer/ (tokenizer: auto).
    code = recipe("dpo").main(["--config", str(CONFIGS / "baby_instruction_dpo.yaml"), *sets(
        *TINY, f"run_dir={root / 'dpo'}", f"data.path={root / 'pref.json'}",
        f"model.init_from={sft_run}", "model.tokenizer=auto")])
    assert code == 0
    return root / "dpo"


def _encodings(tokenizer, texts=TEXTS):
    return [list(map(int, tokenizer.encode(t))) for t in texts]


def test_sft_from_a_hugging_face_folder(root, sft_run):
    from kzoo.data.instruction import encode_sft, read_instruction_records, split_records

    hf_tok = transformers.AutoTokenizer.from_pretrained(root / "hf")
    tok = load_tokenizer(sft_run / "tokenizer")  # the run keeps the folder's tokenizer
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == TOKENIZER_VOCAB
    assert _encodings(tok) == [hf_tok.encode(t) for t in TEXTS]
    model = load_model_file(sft_run / "model.keras", expect=CausalLM)
    assert model.vocab_size == MODEL_VOCAB and model.num_kv_heads == 2
    # The run started from the folder's weights: its held-out loss before training is the
    # one transformers computes on the same rows.
    metrics = json.loads((sft_run / "metrics.json").read_text())
    _, val = split_records(read_instruction_records(root / "sft.json"), 0.25, 0)
    arrays = encode_sft(val, tok, 64, "plain")
    reference = transformers.AutoModelForCausalLM.from_pretrained(root / "hf").eval()
    ids, mask = arrays["token_ids"], arrays["loss_mask"][:, 1:]
    with torch.no_grad():
        logps = torch.log_softmax(reference(torch.tensor(ids[:, :-1])).logits, -1)
    target = np.take_along_axis(logps.numpy(), ids[:, 1:, None], -1)[..., 0]
    expected = -float((target * mask).sum() / mask.sum())
    assert abs(metrics["val_response_loss_before"] - expected) < 1e-4
    assert metrics["val_response_loss_after"] != metrics["val_response_loss_before"]


def test_dpo_from_the_sft_run_folder_alone(sft_run, dpo_run):
    metrics = json.loads((dpo_run / "metrics.json").read_text())
    assert abs(metrics["held_out_before"]["loss"] - 0.693147) < 1e-4
    tok = load_tokenizer(dpo_run / "tokenizer")
    assert isinstance(tok, HFTokenizer)
    assert _encodings(tok) == _encodings(load_tokenizer(sft_run / "tokenizer"))
    assert load_model_file(dpo_run / "model.keras", expect=CausalLM).vocab_size == MODEL_VOCAB


def test_export_hf_matches_transformers(root, dpo_run, capsys):
    out = root / "exported" / "dpo_hf"
    assert recipe("export_hf").main([str(dpo_run), str(out)]) == 0
    assert "with the run's hf tokenizer" in capsys.readouterr().out
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ours = load_model_file(dpo_run / "model.keras", expect=CausalLM)
    ids = np.random.default_rng(0).integers(0, TOKENIZER_VOCAB, size=(2, 20))
    assert np.abs(np.asarray(ours(ids)) - interop.hf_logits(theirs, ids)).max() < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    original = transformers.AutoTokenizer.from_pretrained(root / "hf")
    kzoo_tok = load_tokenizer(dpo_run / "tokenizer")
    assert [hf_tok.encode(t) for t in TEXTS] == _encodings(kzoo_tok) == \
        [original.encode(t) for t in TEXTS]
    assert hf_tok.eos_token == "<|endoftext|>"
    assert [p.name for p in out.parent.iterdir()] == ["dpo_hf"]  # no temporary folder left


def test_export_hf_refuses_and_leaves_nothing(root, dpo_run, tmp_path, capsys):
    export = recipe("export_hf")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert export.main([str(dpo_run), str(full)]) == 2
    assert f"OUT_DIR {full} is not empty" in one_error_line(capsys)
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    assert export.main([str(root / "hf"), str(tmp_path / "x")]) == 2
    assert "is a hf model, not a kzoo run folder" in one_error_line(capsys)
    assert export.main([str(tmp_path / "nothing"), str(tmp_path / "y")]) == 2
    assert f"RUN_DIR {tmp_path / 'nothing'} does not exist" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    with pytest.raises(SystemExit) as exit_:
        export.main(["--help"])
    assert exit_.value.code == 0 and "Hugging Face folder" in capsys.readouterr().out


def test_export_hf_of_a_byte_run_writes_no_tokenizer(tmp_path, capsys):
    run = tmp_path / "run"
    model = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=32)
    run.mkdir()
    model.save(run / "model.keras")
    ByteTokenizer().save(run / "tokenizer")
    out = tmp_path / "empty"
    out.mkdir()  # an empty folder is fine
    assert recipe("export_hf").main([str(run), str(out)]) == 0
    assert "without a tokenizer: the run's byte tokenizer has no Hugging Face form" in \
        capsys.readouterr().out
    assert not (out / "tokenizer.json").exists()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = np.arange(24).reshape(2, 12)
    assert np.abs(np.asarray(model(ids)) - interop.hf_logits(theirs, ids)).max() < 1e-4


def test_generate_on_a_hugging_face_folder(root, capsys):
    prompt, new = "the cat sat", 8
    assert recipe("generate").main([str(root / "hf"), "--prompt", prompt, "--sampler", "greedy",
                                    "--max-new-tokens", str(new), "--no-stop-at-eot"]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(root / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(root / "hf").eval()
    ids = torch.tensor([hf_tok.encode(prompt)])
    with torch.no_grad():
        out = theirs.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    expected = hf_tok.decode(out[0, ids.shape[1]:])
    assert capsys.readouterr().out == prompt + expected + "\n"


def _gpt2_preset(folder, bpe):
    """A keras-hub GPT2CausalLM preset with `bpe`'s vocabulary and merges and random weights."""
    keras_hub = pytest.importorskip("keras_hub")
    model = json.loads(bpe.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=model["vocab"], merges=merges)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=MODEL_VOCAB, num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=64)
    rng = np.random.default_rng(1)
    for w in backbone.weights:
        w.assign(rng.normal(scale=0.3, size=w.shape).astype("float32"))
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=32)
    keras_hub.models.GPT2CausalLM(backbone, preprocessor).save_to_preset(str(folder))
    return tokenizer, backbone


def test_generate_on_a_keras_hub_gpt2_preset(tmp_path, capsys):
    from kzoo.models.sources import keras_hub_tokenizer

    hub_tok, backbone = _gpt2_preset(tmp_path / "preset", _trained_bpe())
    tok = keras_hub_tokenizer(tmp_path / "preset")  # read from assets/, no keras-hub code
    texts = TEXTS[:3] + ["<|endoftext|>the dog"]
    assert _encodings(tok, texts) == [np.asarray(hub_tok(t)).tolist() for t in texts]
    prompt, new = "the dog ran", 6
    assert recipe("generate").main([str(tmp_path / "preset"), "--prompt", prompt,
                                    "--sampler", "greedy", "--max-new-tokens", str(new),
                                    "--no-stop-at-eot"]) == 0
    ids = [int(i) for i in np.asarray(hub_tok(prompt))]
    for _ in range(new):  # keras-hub's own forward pass, greedy
        x = np.array([ids])
        hidden = backbone({"token_ids": x, "padding_mask": np.ones_like(x)})
        ids.append(int(np.argmax(np.asarray(backbone.token_embedding(hidden, reverse=True))[0,
                                                                                          -1])))
    expected = np.asarray(hub_tok.detokenize(np.array(ids[-new:]))).item()
    expected = expected.decode() if isinstance(expected, bytes) else expected
    assert capsys.readouterr().out == prompt + expected + "\n"


def test_sft_on_a_keras_hub_llama_preset(root, tmp_path, capsys):
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=MODEL_VOCAB, num_layers=1, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=32)
    backbone.save_to_preset(str(tmp_path / "llama"))
    args = ["--config", str(CONFIGS / "baby_instruction_sft.yaml")]
    common = [*TINY, f"data.path={root / 'sft.json'}", f"model.init_from={tmp_path / 'llama'}"]
    # No tokenizer came with this preset: auto asks for one, in one line.
    assert recipe("sft").main([*args, *sets(*common, f"run_dir={tmp_path / 'a'}",
                                            "model.tokenizer=auto")]) == 2
    line = one_error_line(capsys)
    assert f"the keras-hub preset {tmp_path / 'llama'} holds no tokenizer" in line
    assert "set model.tokenizer to byte or a tokenizer folder" in line
    assert not (tmp_path / "a").exists()
    assert recipe("sft").main([*args, *sets(*common, f"run_dir={tmp_path / 'b'}",
                                            "model.tokenizer=byte")]) == 0
    model = load_model_file(tmp_path / "b" / "model.keras", expect=CausalLM)
    assert (model.vocab_size, model.num_kv_heads, model.norm) == (MODEL_VOCAB, 2, "rmsnorm")
    assert load_tokenizer(tmp_path / "b" / "tokenizer").kind == "byte"


def _sft_error(root, tmp_path, capsys, init_from, tokenizer="auto"):
    code = recipe("sft").main(["--config", str(CONFIGS / "baby_instruction_sft.yaml"), *sets(
        *TINY, f"run_dir={tmp_path / 'run'}", f"data.path={root / 'sft.json'}",
        f"model.init_from={init_from}", f"model.tokenizer={tokenizer}")])
    assert code == 2
    assert not (tmp_path / "run").exists()
    return one_error_line(capsys)


def test_init_from_an_empty_folder(root, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = _sft_error(root, tmp_path, capsys, tmp_path / "empty")
    assert f"model.init_from {tmp_path / 'empty'} is a folder kzoo does not recognize" in line
    for form in ("a .keras model file", "a kzoo run folder", "a Hugging Face folder",
                 "a keras-hub preset folder"):
        assert form in line


def test_init_from_a_config_without_weights(root, tmp_path, capsys):
    (tmp_path / "noweights").mkdir()
    shutil.copy(root / "hf" / "config.json", tmp_path / "noweights")
    (tmp_path / "noweights" / "pytorch_model.bin").write_bytes(b"not loaded")
    line = _sft_error(root, tmp_path, capsys, tmp_path / "noweights")
    assert f"{tmp_path / 'noweights'} has config.json but no weights" in line
    assert "['pytorch_model.bin'] are pickle files kzoo never loads" in line


def test_a_tokenizer_larger_than_the_model(root, tmp_path, capsys):
    interop.make_checkpoint(tmp_path / "small", "gpt2")  # 96 embedding rows
    capsys.readouterr()  # transformers' progress bar
    line = _sft_error(root, tmp_path, capsys, tmp_path / "small", tokenizer="byte")
    assert "vocab_size=257) does not match" in line and "(vocab_size=96)" in line
    assert "index past the model's 96 embedding rows" in line


def test_a_bare_keras_file_needs_a_tokenizer(root, tmp_path, capsys):
    file = tmp_path / "bare.keras"
    CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=64).save(file)
    line = _sft_error(root, tmp_path, capsys, file)
    assert f"{file} has no tokenizer/ folder beside it" in line


def test_check_vocab_allows_padded_embeddings():
    check_vocab(ByteTokenizer(), 257)
    check_vocab(ByteTokenizer(), 320)  # more rows than ids: a padded vocabulary
    with pytest.raises(ValueError, match=r"vocab_size=257\) does not match the model "
                                         r"\(vocab_size=256\)"):
        check_vocab(ByteTokenizer(), 256)


def test_the_human_loop_on_a_hugging_face_folder(root, tmp_path, capsys):
    """`kzoo rate`'s live sampler on an HF folder with its chat template, the ratings written
    by the rating store, then `kzoo dpo` on that file with the same template: the loop of
    docs/guides/human-in-the-loop.md on a real checkpoint's layout."""
    from kzoo.cli.main import main as kzoo
    from kzoo.cli.rate.sources import LiveSampler, build_sampler
    from kzoo.cli.rate.store import RatingStore
    from kzoo.models.sources import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(root / "hf"), "auto")
    prompts = [f"{_sentence(i)} {i}" for i in range(24)]
    live = LiveSampler(model, tok, prompts, build_sampler("top_k", {"k": 20}),
                       {"model": str(root / "hf")}, seed=3, max_new_tokens=6,
                       template="chat")
    live.start()
    live.join(300)
    assert live.error is None and len(live.items) == len(prompts)
    out = tmp_path / "ratings.jsonl"
    store = RatingStore(out)
    for item in live.items:
        a, b = item["completions"]
        store.add(item["id"], "left", {"prompt": item["prompt"], "chosen": a, "rejected": b},
                  "pairs", item["meta"])
    store.close()
    run = tmp_path / "dpo"
    code = kzoo(["dpo", "--config", "gpt/nano_preference_dpo", *sets(
        f"run_dir={run}", f"data.path={out}", "data.template=chat",
        f"model.init_from={root / 'hf'}", "model.tokenizer=auto", "data.max_length=64",
        "data.validation_fraction=0.4", "train.epochs=1", "train.verbose=0",
        "train.jit_compile=false")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["bad_pairs"]["read"] == len(prompts)
    assert metrics["split"]["train_pairs"] > 0 and metrics["split"]["validation_pairs"] > 0


@pytest.mark.parametrize("model_type, tokenizer", [("qwen3", "qwen3"),
                                                   ("gemma3_text", "gemma3")])
def test_sft_init_from_qwen3_and_gemma3_folders(root, tmp_path, model_type, tokenizer):
    """`model.init_from` on folders saved by transformers, with the family's tokenizer and
    chat template (tests/tokenizers/family_tokenizers.py): the run's held-out loss before
    training is transformers' on the same chat-rendered rows (Gemma's window shorter than
    them)."""
    from kzoo.data.instruction import encode_sft, read_instruction_records, split_records
    from tests.tokenizers.family_tokenizers import write_folder

    folder = write_folder(tokenizer, tmp_path / "hf")
    vocab = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    window = {"sliding_window": 16} if tokenizer == "gemma3" else {}
    interop.make_checkpoint(folder, model_type, vocab_size=vocab, max_position_embeddings=128,
                            **window)
    run = tmp_path / "sft"
    code = recipe("sft").main(["--config", str(CONFIGS / "baby_instruction_sft.yaml"), *sets(
        *TINY, "data.template=chat", f"run_dir={run}", f"data.path={root / 'sft.json'}",
        f"model.init_from={folder}", "model.tokenizer=auto")])
    assert code == 0
    model = load_model_file(run / "model.keras", expect=CausalLM)
    assert model.qk_norm and (model.sliding_window == 16) == (tokenizer == "gemma3")
    tok = load_tokenizer(run / "tokenizer")
    assert tok.chat_template == transformers.AutoTokenizer.from_pretrained(
        folder).chat_template
    metrics = json.loads((run / "metrics.json").read_text())
    _, val = split_records(read_instruction_records(root / "sft.json"), 0.25, 0)
    arrays = encode_sft(val, tok, 64, "chat")
    ids, mask = arrays["token_ids"], arrays["loss_mask"][:, 1:]
    assert ids.shape[1] > 16 and mask.sum() > 0
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logps = torch.log_softmax(reference(torch.tensor(ids[:, :-1])).logits, -1)
    target = np.take_along_axis(logps.numpy(), ids[:, 1:, None], -1)[..., 0]
    expected = -float((target * mask).sum() / mask.sum())
    assert abs(metrics["val_response_loss_before"] - expected) < 1e-4
    assert metrics["val_response_loss_after"] != metrics["val_response_loss_before"]
