"""AdamW: no decay on norms, biases and embeddings; decay on matrices; clipping."""

import numpy as np
import pytest

from kzoo.models import CausalLM
from kzoo.training.optimizers import build_adamw, no_decay_variables


@pytest.mark.parametrize("preset", ["gpt_nano", "llama_nano"])
def test_decay_split(preset):
    model = CausalLM.from_preset(preset, vocab_size=32, max_sequence_length=16)
    exempt = {id(v) for v in no_decay_variables(model)}
    for v in model.trainable_variables:
        is_embedding = "embedding" in v.path and "reverse" not in v.path
        should_skip = len(v.shape) < 2 or is_embedding
        assert (id(v) in exempt) == should_skip, v.path
    opt = build_adamw(model, 1e-3, weight_decay=0.1)
    assert not any(opt._use_weight_decay(v) for v in no_decay_variables(model))
    assert any(opt._use_weight_decay(v) for v in model.trainable_variables)


def test_weight_decay_applies_only_to_matrices():
    model = CausalLM.from_preset("gpt_nano", vocab_size=16, max_sequence_length=8)
    opt = build_adamw(model, learning_rate=0.1, weight_decay=0.5, clip_norm=None)
    before = [v.numpy().copy() for v in model.trainable_variables]
    zeros = [np.zeros(v.shape, "float32") for v in model.trainable_variables]
    opt.apply_gradients(zip(zeros, model.trainable_variables))
    exempt = {id(v) for v in no_decay_variables(model)}
    for v, old in zip(model.trainable_variables, before):
        if id(v) in exempt:
            np.testing.assert_array_equal(v.numpy(), old)  # zero gradient, no decay: unchanged
        elif np.abs(old).sum() > 0:
            np.testing.assert_allclose(v.numpy(), old * (1 - 0.1 * 0.5), rtol=1e-5)


def test_global_clipnorm_is_set():
    model = CausalLM.from_preset("gpt_nano", vocab_size=16, max_sequence_length=8)
    assert build_adamw(model, 1e-3, clip_norm=1.0).global_clipnorm == 1.0
