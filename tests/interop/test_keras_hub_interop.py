"""keras-hub both ways: GPT-2, Llama, Llama 3 (frequency-scaled RoPE), Qwen3 and Gemma 3
backbones, the CausalLM tasks holding them and preset folders written by `save_to_preset`, into
kzoo and back, with identical logits."""

import numpy as np
import pytest

from kzoo.models import CausalLM

keras_hub = pytest.importorskip("keras_hub")

IDS = np.random.default_rng(3).integers(1, 97, size=(2, 12))
MASK = np.ones_like(IDS)


def _randomize(backbone, seed=0):
    rng = np.random.default_rng(seed)
    for w in backbone.weights:
        w.assign(rng.normal(scale=0.2, size=w.shape).astype("float32"))
    return backbone


def _hub_logits(backbone):
    hidden = backbone({"token_ids": IDS, "padding_mask": MASK})
    return np.asarray(backbone.token_embedding(hidden, reverse=True))


def _backbones():
    return {
        "gpt2": lambda: keras_hub.models.GPT2Backbone(
            vocabulary_size=97, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=64,
            max_sequence_length=16),
        "llama-tied": lambda: keras_hub.models.LlamaBackbone(
            vocabulary_size=97, num_layers=2, num_query_heads=4, num_key_value_heads=2,
            hidden_dim=32, intermediate_dim=48, rope_max_wavelength=500,
            tie_word_embeddings=True),
        "llama3-scaled-rope": lambda: keras_hub.models.Llama3Backbone(
            vocabulary_size=97, num_layers=2, num_query_heads=4, num_key_value_heads=1,
            hidden_dim=32, intermediate_dim=48, rope_max_wavelength=500,
            rope_frequency_adjustment_factor=4.0, rope_low_freq_factor=1.0,
            rope_high_freq_factor=4.0, rope_pretraining_sequence_length=8),
        "qwen3-untied-window-rope-factor": lambda: keras_hub.models.Qwen3Backbone(
            vocabulary_size=97, num_layers=2, num_query_heads=4, num_key_value_heads=2,
            head_dim=12, hidden_dim=32, intermediate_dim=48, rope_max_wavelength=500,
            rope_scaling_factor=2.0, tie_word_embeddings=False, sliding_window_size=5),
        "qwen3-tied": lambda: keras_hub.models.Qwen3Backbone(
            vocabulary_size=97, num_layers=2, num_query_heads=4, num_key_value_heads=1,
            head_dim=8, hidden_dim=32, intermediate_dim=48, tie_word_embeddings=True),
        # 7 layers: keras-hub's pattern (5 local, 1 global) and one local layer after it; a
        # window shorter than the 12 tokens, global rope scaling, head_dim != hidden / heads
        "gemma3-window-rope-factor": lambda: keras_hub.models.Gemma3Backbone(
            vocabulary_size=97, image_size=896, num_layers=7, num_query_heads=4,
            num_key_value_heads=2, hidden_dim=32, intermediate_dim=48, head_dim=12,
            use_post_ffw_norm=True, use_post_attention_norm=True,
            use_sliding_window_attention=True, sliding_window_size=5,
            global_rope_scaling_factor=2.0, dtype="float32"),
        "gemma3-global-no-qk-post-norms": lambda: keras_hub.models.Gemma3Backbone(
            vocabulary_size=97, image_size=896, num_layers=2, num_query_heads=4,
            num_key_value_heads=1, hidden_dim=32, intermediate_dim=48, head_dim=8,
            use_query_key_norm=False, dtype="float32"),
    }


def test_every_family_backbone_has_a_case():
    """A family that registers a keras-hub backbone is tested here by being registered."""
    from kzoo.models.families import keras_hub_backbones

    made = {type(make()).__name__ for make in _backbones().values()}
    assert made == set(keras_hub_backbones())


@pytest.mark.parametrize("name", list(_backbones()))
def test_backbone_into_kzoo_and_back(name):
    import keras

    if name.startswith("qwen3") and "window" in name and keras.backend.backend() != "tensorflow":
        # keras-hub 0.32's Qwen3 window mask off TensorFlow (triu/tril instead of band_part)
        # gives other logits past the window than its TensorFlow path and transformers, which
        # kzoo matches on every backend (test_hf_parity's qwen3 window cases).
        pytest.skip("keras-hub's Qwen3 sliding window is exact on TensorFlow only")
    backbone = _randomize(_backbones()[name]())
    expected = _hub_logits(backbone)
    model = CausalLM.from_keras_hub(backbone)
    assert np.abs(np.asarray(model(IDS)) - expected).max() < 1e-4
    assert expected.std() > 0.05
    back = model.to_keras_hub()
    assert type(back) is type(backbone)
    assert np.abs(_hub_logits(back) - expected).max() < 1e-5


def test_causal_lm_task_and_preset_folder(tmp_path):
    backbone = _randomize(_backbones()["llama3-scaled-rope"]())
    expected = _hub_logits(backbone)
    task = keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)
    assert np.abs(np.asarray(CausalLM.from_keras_hub(task)(IDS)) - expected).max() < 1e-4
    task.save_to_preset(str(tmp_path))
    model = CausalLM.from_keras_hub(tmp_path, max_sequence_length=256)
    assert model.max_sequence_length == 256 and model.rope_scaling["factor"] == 4.0
    assert np.abs(np.asarray(model(IDS)) - expected).max() < 1e-4


def test_kzoo_model_to_keras_hub_generates_the_same(tmp_path):
    model = CausalLM.from_preset("gpt_nano", vocab_size=97, max_sequence_length=32)
    backbone = model.to_keras_hub()
    hidden = backbone({"token_ids": IDS, "padding_mask": MASK})
    logits = np.asarray(backbone.token_embedding(hidden, reverse=True))
    assert np.abs(np.asarray(model(IDS)) - logits).max() < 1e-5


def test_unsupported_models_are_refused_in_one_line(tmp_path):
    other = keras_hub.models.MistralBackbone(
        vocabulary_size=97, num_layers=1, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=32, intermediate_dim=48)
    with pytest.raises(ValueError, match=r"MistralBackbone is not supported; supported "
                       r"keras-hub backbones: GPT2Backbone, LlamaBackbone, Llama3Backbone"):
        CausalLM.from_keras_hub(other)
    with pytest.raises(ValueError, match=r"is not a keras-hub preset folder"):
        CausalLM.from_keras_hub(tmp_path)
    # keras-hub 0.32's Llama RoPE never reads this factor: copying it would change the model.
    ignored = keras_hub.models.LlamaBackbone(
        vocabulary_size=97, num_layers=1, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=32, intermediate_dim=48, rope_position_scaling_factor=2.0)
    with pytest.raises(ValueError, match=r"rope_position_scaling_factor=2.0 is ignored by "
                       r"keras-hub's Llama RoPE"):
        CausalLM.from_keras_hub(ignored)
    biased = CausalLM.from_preset("llama_nano", qkv_bias=True)
    with pytest.raises(ValueError, match=r"LlamaBackbone has no projection biases"):
        biased.to_keras_hub()


def test_gemma3_settings_keras_hub_lacks_are_refused_by_name():
    def gemma(**settings):
        return keras_hub.models.Gemma3Backbone(**{
            **dict(vocabulary_size=97, image_size=896, num_layers=1, num_query_heads=2,
                   num_key_value_heads=1, hidden_dim=16, intermediate_dim=24, head_dim=8,
                   dtype="float32"), **settings})

    with pytest.raises(ValueError, match=r"Gemma3Backbone: final_logit_soft_cap=30.0 is not "
                       r"implemented in kzoo; supported: None"):
        CausalLM.from_keras_hub(gemma(final_logit_soft_cap=30.0))
    with pytest.raises(ValueError, match=r"use_bidirectional_attention=True is not a causal"):
        CausalLM.from_keras_hub(gemma(use_bidirectional_attention=True))
    with pytest.raises(ValueError, match=r"local_rope_scaling_factor=2.0 is not implemented"):
        CausalLM.from_keras_hub(gemma(local_rope_scaling_factor=2.0))
    with pytest.raises(ValueError, match=r"use_post_ffw_norm and use_post_attention_norm "):
        CausalLM.from_keras_hub(gemma(use_post_ffw_norm=True))
    # gemma3_nano alternates local and global layers; keras-hub has every 6th layer global
    with pytest.raises(ValueError, match=r"Gemma3Backbone has one layer pattern \(every 6th "
                       r"layer global\) or all global, got layer_types="):
        CausalLM.from_preset("gemma3_nano").to_keras_hub()
    six = CausalLM.from_preset("gemma3_nano", num_layers=6, layer_types=None)
    with pytest.raises(ValueError, match=r"Gemma3Backbone has one layer pattern"):
        six.to_keras_hub()  # a window without layer_types slides every layer
    with pytest.raises(ValueError, match=r"Gemma3Backbone scales queries by head_dim \*\* "
                       r"-0.5 only, got attention_scale=0.1"):
        CausalLM.from_preset("gemma3_nano", attention_scale=0.1,
                             layer_types=["full_attention"] * 2).to_keras_hub()
    with pytest.raises(ValueError, match=r"Gemma3Backbone needs tie_embeddings=True"):
        CausalLM.from_preset("gemma3_nano", tie_embeddings=False,
                             layer_types=["full_attention"] * 2).to_keras_hub()


def test_gemma3_preset_shape_goes_to_keras_hub_and_back():
    """A kzoo Gemma 3 with keras-hub's pattern (6 layers: 5 local, 1 global) round-trips."""
    pattern = ["sliding_attention"] * 5 + ["full_attention"]
    model = CausalLM.from_preset("gemma3_nano", num_layers=6, layer_types=pattern,
                                 sliding_window=4, vocab_size=97)
    for w in model.weights:  # the norms start at zero: move them so the copy is seen
        w.assign(np.random.default_rng(1).normal(scale=0.2, size=w.shape).astype("float32"))
    backbone = model.to_keras_hub()
    assert type(backbone).__name__ == "Gemma3Backbone"
    assert backbone.get_config()["use_sliding_window_attention"]
    expected = np.asarray(model(IDS))
    assert np.abs(_hub_logits(backbone) - expected).max() < 1e-4
    again = CausalLM.from_keras_hub(backbone, max_sequence_length=128)
    assert again.layer_types == pattern and again.sliding_window == 4
    assert np.abs(np.asarray(again(IDS)) - expected).max() < 1e-5
