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


def test_two_steps_match_torch_adamw_with_nanogpt_defaults():
    # build_adamw's defaults are nanoGPT's (betas 0.9/0.95, decay 0.1 on matrices only, eps
    # 1e-8, global norm clipped to 1): two steps must land where torch's AdamW lands.
    torch = pytest.importorskip("torch")
    model = CausalLM.from_preset("gpt_nano", vocab_size=16, max_sequence_length=8)
    variables = model.trainable_variables
    exempt = {id(v) for v in no_decay_variables(model)}
    params = [torch.tensor(v.numpy(), dtype=torch.float64, requires_grad=True)
              for v in variables]
    reference = torch.optim.AdamW([
        {"params": [p for p, v in zip(params, variables) if id(v) not in exempt],
         "weight_decay": 0.1},
        {"params": [p for p, v in zip(params, variables) if id(v) in exempt],
         "weight_decay": 0.0},
    ], lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    ours = build_adamw(model, learning_rate=1e-2)
    rng = np.random.default_rng(0)
    for step in range(2):
        # global norm ~ 10: clipping to 1 matters; a smaller second step stays unclipped
        scale = 0.05 if step == 0 else 1e-4
        # |g| kept away from 0: Keras adds epsilon before its bias correction, torch after,
        # which differs by ~eps / |g| of a step
        grads = [(scale * rng.choice([-1.0, 1.0], v.shape) * rng.uniform(0.5, 1.5, v.shape))
                 .astype("float32") for v in variables]
        ours.apply_gradients(zip(grads, variables))
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        reference.step()
    for v, p in zip(variables, params):
        np.testing.assert_allclose(v.numpy(), p.detach().numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=v.path)
