"""keras-hub both ways: GPT-2, Llama, Llama 3 (frequency-scaled RoPE) and Qwen3 backbones, the
CausalLM tasks holding them and preset folders written by `save_to_preset`, into kzoo and back,
with identical logits."""

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
    }


def test_every_family_backbone_has_a_case():
    """A family that registers a keras-hub backbone is tested here by being registered."""
    from kzoo.models.families import keras_hub_backbones

    made = {type(make()).__name__ for make in _backbones().values()}
    assert made == set(keras_hub_backbones())


@pytest.mark.parametrize("name", list(_backbones()))
def test_backbone_into_kzoo_and_back(name):
    import keras

    if "window" in name and keras.backend.backend() != "tensorflow":
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
