"""kzoo loads transformers checkpoints and computes what transformers computes, then saves them
back in a form transformers loads: for every registered family's model types (gpt2, llama,
mistral, qwen2, qwen3, gemma3_text), tied and untied, with non-default RoPE (llama3 scaling,
linear, another theta; Gemma 3's local and global bases), an explicit head_dim, q/k/v biases,
q/k norms, sliding windows shorter than the prompt (64 greedy tokens past them), a sharded
folder and a bfloat16 one. A model type without a case here fails
`test_every_registered_model_type_has_a_case`: registering a family is what gets it tested.
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
    # Windows shorter than the prompt: 64 greedy tokens run far past them.
    "mistral-window-binds": dict(model_type="mistral", sliding_window=6,
                                 max_position_embeddings=128, new_tokens=64),
    "qwen2-sliding-layers-from-max-window-layers": dict(
        model_type="qwen2", use_sliding_window=True, sliding_window=6, max_window_layers=1,
        max_position_embeddings=128, new_tokens=64),
    "qwen3-untied-window-linearrope-sharded": dict(
        model_type="qwen3", tie_word_embeddings=False, use_sliding_window=True,
        sliding_window=6, layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
        max_position_embeddings=128, save_kwargs={"max_shard_size": "20KB"}, new_tokens=64),
    "qwen3-tied-attentionbias-llama3rope-bf16": dict(
        model_type="qwen3", tie_word_embeddings=True, attention_bias=True, head_dim=12,
        rope_parameters=LLAMA3, dtype="bfloat16"),
    "gemma3-window-local-global-rope-sharded": dict(
        model_type="gemma3_text", sliding_window=6, query_pre_attn_scalar=12,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}},
        save_kwargs={"max_shard_size": "20KB"}, new_tokens=64),
    "gemma3-untied-llama3rope-bf16": dict(
        model_type="gemma3_text", tie_word_embeddings=False, sliding_window=6,
        layer_types=["full_attention", "sliding_attention"], max_position_embeddings=128,
        rope_parameters={"full_attention": LLAMA3,
                         "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}},
        dtype="bfloat16", new_tokens=64),
}
IDS = np.random.default_rng(7).integers(0, 96, size=(2, 24))


def test_every_registered_model_type_has_a_case(helpers):
    from kzoo.models.families import supported_model_types

    assert set(helpers.SMALL) == set(supported_model_types())
    assert {case["model_type"] for case in CASES.values()} == set(supported_model_types())


def _build(helpers, folder, case):
    case = dict(case)
    case.pop("new_tokens", None)
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
    new = CASES[name].get("new_tokens", 32)
    ours = model.generate(prompts.tolist(), max_new_tokens=new).token_ids
    with torch.no_grad():
        theirs = reference.generate(torch.tensor(prompts), max_new_tokens=new,
                                    min_new_tokens=new, do_sample=False, pad_token_id=0)
    assert ours == theirs[:, 8:].tolist()
    if getattr(reference.config, "sliding_window", None) in (6,):
        assert model.sliding_window == 6 and 8 + new > 2 * model.sliding_window

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
    import keras

    from kzoo.interop import hf_weights

    if keras.backend.backend() != "tensorflow":
        pytest.skip("only TensorFlow variables take sliced assignments (hf_weights)")
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
