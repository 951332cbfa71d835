"""Parameter groups add up, and the logit lens's last reading is the model's own output."""

import numpy as np
import pytest

from kzoo.models import CausalLM
from kzoo.viz import logit_lens, parameter_groups, plot_logit_lens, plot_parameter_groups


@pytest.mark.parametrize("preset, tied", [("gpt_nano", True), ("llama_nano", False)])
def test_parameter_groups_add_up(preset, tied):
    model = CausalLM.from_preset(preset, vocab_size=50, max_sequence_length=32)
    groups = parameter_groups(model)
    assert sum(groups.values()) == model.count_params()
    assert groups["token embedding"] == 50 * model.hidden_dim
    assert (groups["output head"] == 0) == tied
    assert (groups["position embedding"] == 32 * model.hidden_dim) == tied  # gpt: learned


def test_logit_lens_last_reading_is_model_output():
    model = CausalLM.from_preset("llama_nano", vocab_size=30, max_sequence_length=16)
    ids = np.random.default_rng(1).integers(0, 30, size=(2, 6))
    probs = logit_lens(model, ids)
    assert probs.shape == (model.num_layers + 1, 2, 6, 30)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    logits = np.asarray(model(ids), np.float64)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs[-1], expected, atol=1e-5)
    # Earlier readings differ from the final one (the blocks do change the prediction).
    assert np.abs(probs[0] - probs[-1]).max() > 1e-4


def test_logit_lens_bad_input():
    model = CausalLM.from_preset("gpt_nano", vocab_size=10, max_sequence_length=4)
    with pytest.raises(ValueError, match="max_sequence_length=4"):
        logit_lens(model, np.zeros((1, 5), "int32"))
    with pytest.raises(ValueError, match="int array"):
        logit_lens(model, np.zeros((5,), "int32"))


def test_plots_write_pngs(tmp_path):
    model = CausalLM.from_preset("gpt_nano", vocab_size=10, max_sequence_length=8)
    ids = [1, 2, 3, 4]
    probs = logit_lens(model, np.array([ids]))[:, 0]
    out = plot_logit_lens(probs, ids, tmp_path / "lens.png", labels=lambda i: chr(97 + i))
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"\(readings, 3, vocab\)"):
        plot_logit_lens(probs, ids[:3], tmp_path / "x.png")
    out = plot_parameter_groups(parameter_groups(model), tmp_path / "params.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no parameters"):
        plot_parameter_groups({"a": 0}, tmp_path / "y.png")
