"""kzoo loads transformers checkpoints and computes what transformers computes, then saves them
back in a form transformers loads: for gpt2, llama, mistral and qwen2, tied and untied, with
non-default RoPE (llama3 scaling, linear, another theta), an explicit head_dim, q/k/v biases,
a sharded folder and a bfloat16 one.
"""

import json

import numpy as np
import pytest

from kzoo.models import CausalLM

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LLAMA3 = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 4.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
CASES = {
    "gpt2-tied": dict(model_type="gpt2"),
    "gpt2-untied-exact-gelu": dict(model_type="gpt2", tie_word_embeddings=False,
                                   activation_function="gelu"),
    "llama-llama3rope-headdim-tied-biases-sharded": dict(
        model_type="llama", head_dim=16, tie_word_embeddings=True, attention_bias=True,
        mlp_bias=True, rope_parameters=LLAMA3, save_kwargs={"max_shard_size": "20KB"}),
    "llama-linearrope-geglu-bf16": dict(
        model_type="llama", hidden_act="gelu_pytorch_tanh",
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
        dtype="bfloat16"),
    "mistral-headdim-mqa-window-covers-context": dict(
        model_type="mistral", head_dim=12, num_key_value_heads=1, sliding_window=64),
    "qwen2-qkvbias-headdim-tied": dict(
        model_type="qwen2", tie_word_embeddings=True, head_dim=12,
        rope_parameters={"rope_type": "default", "rope_theta": 2000.0}),
}
IDS = np.random.default_rng(7).integers(0, 96, size=(2, 24))


def _build(helpers, folder, case):
    case = dict(case)
    model_type = case.pop("model_type")
    dtype = getattr(torch, case.pop("dtype")) if "dtype" in case else None
    return helpers.make_checkpoint(folder, model_type, dtype=dtype,
                                   save_kwargs=case.pop("save_kwargs", None), **case)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_generation_and_export_match_transformers(name, helpers, tmp_path):
    reference = _build(helpers, tmp_path / "hf", CASES[name])
    if "sharded" in name:
        assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    model = CausalLM.from_hf(tmp_path / "hf")

    expected = helpers.hf_logits(reference, IDS)
    actual = np.asarray(model(IDS))
    assert np.abs(actual - expected).max() < 1e-4
    assert expected.std() > 0.05  # not vacuous: the logits vary

    prompts = IDS[:, :8]
    ours = model.generate(prompts.tolist(), max_new_tokens=32).token_ids
    with torch.no_grad():
        theirs = reference.generate(torch.tensor(prompts), max_new_tokens=32, min_new_tokens=32,
                                    do_sample=False, pad_token_id=0)
    assert ours == theirs[:, 8:].tolist()

    model.save_hf(tmp_path / "back")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back",
                                                             dtype=torch.float32)
    assert np.abs(helpers.hf_logits(again, IDS) - expected).max() < 1e-4


def test_transformers_4_config_spelling_loads_the_same(helpers, tmp_path):
    """4.x wrote `rope_theta` and `rope_scaling` ({"type": ...}) where 5.x writes
    `rope_parameters`; both mean the same model."""
    reference = helpers.make_checkpoint(tmp_path, "llama", rope_parameters=LLAMA3)
    scaling = {k: v for k, v in LLAMA3.items() if k not in ("rope_type", "rope_theta")}
    helpers.edit_json(tmp_path / "config.json", rope_parameters=...,
                      rope_theta=LLAMA3["rope_theta"],
                      rope_scaling={"type": "llama3", **scaling}, torch_dtype="float32")
    model = CausalLM.from_hf(tmp_path)
    assert model.rope_scaling["factor"] == 4.0 and model.rope_max_wavelength == 500.0
    expected = helpers.hf_logits(reference, IDS)
    assert np.abs(np.asarray(model(IDS)) - expected).max() < 1e-4


def test_bfloat16_folder_loads_into_a_bfloat16_model(helpers, tmp_path):
    reference = helpers.make_checkpoint(tmp_path, "qwen2", dtype=torch.bfloat16)
    model = CausalLM.from_hf(tmp_path, dtype="bfloat16")
    assert model.token_embedding.embeddings.dtype == "bfloat16"
    stored = reference.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(model.token_embedding.embeddings, "float32"),
                                  stored)  # bf16 in, bf16 kept: bit for bit
    model.save_hf(tmp_path / "back")
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["model_type"] == "qwen2"


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_large_tensors_load_a_few_rows_at_a_time(model_type, helpers, tmp_path, monkeypatch):
    """Embeddings and output heads go in by slices of rows (the head transposed), so loading
    never holds a second copy of them; a tiny chunk size sends these small ones that way."""
    from kzoo.interop import hf_weights

    monkeypatch.setattr(hf_weights, "_CHUNK_BYTES", 1000)
    reference = helpers.make_checkpoint(tmp_path, model_type, tie_word_embeddings=False)
    calls = []
    original = hf_weights._assign_in_chunks
    monkeypatch.setattr(hf_weights, "_assign_in_chunks",
                        lambda slot, handle: calls.append(original(slot, handle)) or calls[-1])
    model = CausalLM.from_hf(tmp_path)
    assert sum(calls) >= 2  # the embedding and the untied head
    expected = helpers.hf_logits(reference, IDS)
    assert np.abs(np.asarray(model(IDS)) - expected).max() < 1e-4
