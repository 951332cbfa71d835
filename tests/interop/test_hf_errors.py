"""Every way a Hugging Face folder can be wrong for kzoo is one line that names the culprit:
the model type (with the supported ones), the config field, the shard, the tensor, its file and
both shapes. Nothing kzoo would compute differently is loaded silently."""

import json
import re

import numpy as np
import pytest

from kzoo.interop.safetensors_io import SafetensorsFile, write_safetensors
from kzoo.models import CausalLM

pytest.importorskip("transformers")


def _refused(folder, match, **options):
    with pytest.raises(ValueError, match=match) as info:
        CausalLM.from_hf(folder, **options)
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


def _rewrite_weights(folder, drop=(), add=None, file="model.safetensors"):
    source = SafetensorsFile(folder / file)
    tensors = {n: np.array(source.get(n)) for n in source.keys() if n not in drop}
    tensors.update(add or {})
    del source
    write_safetensors(folder / file, tensors, {"format": "pt"})


def test_unsupported_model_type_lists_the_supported_ones(copy_of, helpers):
    folder = copy_of("llama")
    helpers.edit_json(folder / "config.json", model_type="gemma")
    from kzoo.models.families import supported_model_types

    message = _refused(folder, r"model_type 'gemma' is not supported; supported model types: "
                       r"\['gpt2', 'llama', 'mistral', 'qwen2', ")
    assert message.endswith(f"supported model types: {list(supported_model_types())}")


def test_multimodal_gemma3_is_refused_by_name(copy_of, helpers):
    folder = copy_of("llama")
    helpers.edit_json(folder / "config.json", model_type="gemma3")
    _refused(folder, r"model_type 'gemma3' is not supported: it is the multimodal Gemma 3 .* "
             r"use a 'gemma3_text' checkpoint")


def test_missing_shard_is_named(copy_of):
    folder = copy_of("sharded")
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    _refused(folder, rf"names shard {re.escape(shard.name)} \(\d+ tensors, e.g. '.+'\) but "
             rf".*{re.escape(shard.name)} is missing")


def test_index_pointing_at_the_wrong_shard_names_tensor_and_file(copy_of):
    folder = copy_of("sharded")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = "model.norm.weight"
    other = next(f for f in sorted(set(index["weight_map"].values()))
                 if f != index["weight_map"][name])
    index["weight_map"][name] = other
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    _refused(folder, rf"puts tensor '{name}' in {other}, but .*{other} does not hold it")


def test_missing_tensor_is_named_with_its_expected_shape(copy_of):
    folder = copy_of("llama")
    _rewrite_weights(folder, drop=["model.layers.1.mlp.up_proj.weight"])
    _refused(folder, r"no tensor 'model.layers.1.mlp.up_proj.weight' \(kzoo variable \S*"
             r"block_1/feedforward/up/kernel, expected shape \(48, 32\)\)")


def test_shape_mismatch_names_tensor_file_and_both_shapes(copy_of, helpers):
    folder = copy_of("llama")
    helpers.edit_json(folder / "config.json", intermediate_size=40)
    _refused(folder, r"tensor 'model.layers.0.mlp.gate_proj.weight' in .*model.safetensors has "
             r"shape \(48, 32\) but config.json implies \(40, 32\)")


def test_unexpected_tensor_is_refused(copy_of):
    folder = copy_of("llama")
    _rewrite_weights(folder, add={"model.layers.0.self_attn.q_norm.weight":
                                  np.ones(8, "float32")})
    _refused(folder, r"1 tensor\(s\) have no place in this llama model, e.g. "
             r"\['model.layers.0.self_attn.q_norm.weight'\]")


def test_pickle_only_folder_is_refused(copy_of):
    folder = copy_of("gpt2")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    _refused(folder, r"neither model.safetensors nor .* pickle files kzoo never loads")


def test_damaged_safetensors_header_names_the_file(copy_of):
    folder = copy_of("gpt2")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    _refused(folder, r"model.safetensors is not a readable safetensors file")


def test_truncated_safetensors_file_names_the_tensor(copy_of):
    folder = copy_of("gpt2")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])
    _refused(folder, r"model.safetensors is not a readable safetensors file: tensor '.+' "
             r"\(F32 \[.*\]\) has data offsets")


def test_missing_config_is_named(copy_of):
    folder = copy_of("gpt2")
    (folder / "config.json").unlink()
    _refused(folder, r"config.json is missing")


def test_sliding_window_smaller_than_context_is_read_and_a_covering_one_dropped(helpers,
                                                                               tmp_path):
    """A window that binds is computed (parity in test_hf_parity); one that covers the context
    never binds, so the model is exactly a global one."""
    helpers.make_checkpoint(tmp_path, "mistral", sliding_window=16)
    model = CausalLM.from_hf(tmp_path)
    assert (model.sliding_window, model.layer_types, model.max_sequence_length) == (16, None, 64)
    inside = CausalLM.from_hf(tmp_path, max_sequence_length=16)
    assert inside.max_sequence_length == 16 and inside.sliding_window is None


def test_qwen2_sliding_layers_are_read(copy_of, helpers):
    folder = copy_of("llama")
    helpers.edit_json(folder / "config.json", model_type="qwen2", use_sliding_window=True,
                      sliding_window=8, layer_types=["full_attention", "sliding_attention"])
    _rewrite_weights(folder, add={f"model.layers.{i}.self_attn.{n}_proj.bias":
                                  np.zeros(w, "float32") for i in range(2)
                                  for n, w in (("q", 32), ("k", 16), ("v", 16))})
    model = CausalLM.from_hf(folder)
    assert model.sliding_window == 8
    assert model.layer_types == ["full_attention", "sliding_attention"]
    helpers.edit_json(folder / "config.json", layer_types=["full_attention", "local"])
    _refused(folder, r"layer_types \['local'\] are not supported; supported: "
             r"\['full_attention', 'sliding_attention'\]")


@pytest.mark.parametrize("changes, match", [
    ({"final_logit_softcapping": 30.0}, r"final_logit_softcapping=30.0 is not implemented"),
    ({"attn_logit_softcapping": 50.0}, r"attn_logit_softcapping=50.0 is not implemented"),
    ({"attention_bias": True}, r"attention_bias=True is not implemented"),
    ({"use_bidirectional_attention": True}, r"use_bidirectional_attention=True is not "),
    ({"hidden_activation": "silu"}, r"hidden_activation 'silu' is not supported; supported: "
     r"\['gelu_pytorch_tanh', 'gelu_new'\]"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                          "sliding_attention": {"rope_type": "linear", "factor": 2.0,
                                                "rope_theta": 1e4}}},
     r"rope_parameters\['sliding_attention'\] .* scales the local RoPE"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0,
                                             "rope_theta": 1e4}}},
     r"rope type 'yarn' is not implemented"),
])
def test_gemma3_fields_that_change_the_computation_are_refused_by_name(changes, match, helpers,
                                                                       tmp_path):
    helpers.make_checkpoint(tmp_path, "gemma3_text")
    helpers.edit_json(tmp_path / "config.json", **changes)
    _refused(tmp_path, match)


def test_qwen3_checkpoint_without_q_norm_names_the_tensor(helpers, tmp_path):
    helpers.make_checkpoint(tmp_path, "qwen3")
    _rewrite_weights(tmp_path, drop=["model.layers.1.self_attn.k_norm.weight"])
    _refused(tmp_path, r"no tensor 'model.layers.1.self_attn.k_norm.weight' \(kzoo variable "
             r"\S*block_1/attention/key_norm/scale, expected shape \(8,\)\)")


@pytest.mark.parametrize("changes, match", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
     r"rope type 'yarn' is not implemented; supported rope types: \['default', 'linear', "
     r"'llama3'\]"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "beta_fast": 3}},
     r"rope settings \['beta_fast'\] are not used by rope type 'default'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
     r"rope type 'llama3' needs \['low_freq_factor', 'high_freq_factor'\]"),
    ({"partial_rotary_factor": 0.5}, r"partial_rotary_factor=0.5 is not supported"),
    ({"hidden_act": "gelu"}, r"hidden_act 'gelu' is not supported; supported: "),
    ({"quantization_config": {"quant_method": "gptq"}}, r"quantization_config=.* not supported"),
    ({"auto_map": {"AutoModelForCausalLM": "x.Model"}}, r"auto_map=.* is not supported"),
    ({"attention_dropout": 0.1}, r"attention_dropout > 0: kzoo's dropout also acts on residuals"),
])
def test_llama_fields_that_change_the_computation_are_refused_by_name(changes, match, copy_of,
                                                                      helpers):
    folder = copy_of("llama")
    helpers.edit_json(folder / "config.json", **changes)
    _refused(folder, match)


@pytest.mark.parametrize("changes, match", [
    ({"add_cross_attention": True}, r"add_cross_attention=True is not supported"),
    ({"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx=True"),
    ({"scale_attn_weights": False}, r"scale_attn_weights=False"),
    ({"activation_function": "gelu_fast"}, r"activation_function 'gelu_fast' is not supported"),
    ({"resid_pdrop": 0.1, "embd_pdrop": 0.0, "attn_pdrop": 0.1}, r"dropout rates .* differ"),
])
def test_gpt2_fields_that_change_the_computation_are_refused_by_name(changes, match, copy_of,
                                                                     helpers):
    folder = copy_of("gpt2")
    helpers.edit_json(folder / "config.json", **changes)
    _refused(folder, match)


def test_differing_gpt2_dropouts_load_with_an_explicit_rate(copy_of, helpers):
    folder = copy_of("gpt2")
    helpers.edit_json(folder / "config.json", resid_pdrop=0.1, embd_pdrop=0.0)
    assert CausalLM.from_hf(folder, dropout=0.05).dropout == 0.05


def test_fields_transformers_does_not_read_are_reported_not_dropped(copy_of, helpers):
    folder = copy_of("llama")
    helpers.edit_json(folder / "config.json", is_llama_config=True, rope_interleaved=False)
    with pytest.warns(UserWarning, match=r"\['is_llama_config', 'rope_interleaved'\] are not "
                      r"read by transformers' llama model either"):
        CausalLM.from_hf(folder)


def test_tied_head_that_differs_from_the_embedding_is_refused(copy_of, helpers):
    folder = copy_of("llama")
    helpers.edit_json(folder / "config.json", tie_word_embeddings=True)
    _rewrite_weights(folder)  # keeps lm_head.weight, which now must equal the embedding
    _refused(folder, r"ties the output head to the embeddings .* 'lm_head.weight' in "
             r"model.safetensors differs from them")


def test_unknown_option_and_gpt2_context_change_are_refused(copy_of):
    folder = copy_of("gpt2")
    _refused(folder, r"unknown option\(s\) \['rope_theta'\]", rope_theta=1.0)
    _refused(folder, r"max_sequence_length must stay n_positions=64", max_sequence_length=32)
