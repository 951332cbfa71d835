"""The plugin contract, both directions: kzoo samplers drive keras_hub's `CausalLM.generate`,
and keras_hub samplers drive kzoo's `generate`."""

import keras
import keras_hub
import numpy as np
import pytest

from kzoo import samplers
from kzoo.generation import Generator
from kzoo.models import CausalLM


@pytest.fixture  # one model per test: on torch a sampler layer, once compiled in, is a
def hub_lm():  # child module that keras-hub's own (non-layer) samplers cannot replace
    keras.utils.set_random_seed(0)  # the same weights whatever ran before
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=32,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


@pytest.fixture(scope="module")
def hub_inputs():
    ids = np.zeros((2, 12), "int32")
    ids[0, :4], ids[1, :3] = [5, 6, 7, 8], [9, 10, 11]
    return {"token_ids": ids, "padding_mask": ids > 0}


def hub_generate(lm, inputs, sampler, stop_token_ids=None):
    lm.compile(sampler=sampler)
    return lm.generate(inputs, stop_token_ids=stop_token_ids)["token_ids"]


def test_kzoo_greedy_in_keras_hub(hub_lm, hub_inputs):
    reference = hub_generate(hub_lm, hub_inputs, "greedy")
    np.testing.assert_array_equal(
        hub_generate(hub_lm, hub_inputs, samplers.GreedySampler()), reference)
    np.testing.assert_array_equal(
        hub_generate(hub_lm, hub_inputs, samplers.TopKSampler(k=1, seed=0)), reference)
    np.testing.assert_array_equal(
        hub_generate(hub_lm, hub_inputs, samplers.BeamSampler(num_beams=1)), reference)


def test_kzoo_beam_in_keras_hub_matches_keras_hub_beam(hub_lm, hub_inputs):
    reference = hub_generate(hub_lm, hub_inputs, keras_hub.samplers.BeamSampler(num_beams=3))
    ours = hub_generate(hub_lm, hub_inputs, samplers.BeamSampler(num_beams=3))
    np.testing.assert_array_equal(ours, reference)


def test_kzoo_top_k_in_keras_hub_stays_in_top_k_and_keeps_prompts(hub_lm, hub_inputs):
    out = hub_generate(hub_lm, hub_inputs, samplers.TopKSampler(k=3, seed=4))
    mask = hub_inputs["padding_mask"]
    np.testing.assert_array_equal(out[mask], hub_inputs["token_ids"][mask])
    for row in range(2):  # every new token is in the top 3 of the full forward pass
        start = int(mask[row].sum())
        logits = np.asarray(hub_lm(
            {"token_ids": out[row:row + 1], "padding_mask": np.ones((1, 12), bool)}))[0]
        for t in range(start, 12):
            assert out[row, t] in np.argsort(-logits[t - 1])[:3]


def test_kzoo_sampler_stops_keras_hub_on_stop_tokens(hub_lm, hub_inputs):
    free = hub_generate(hub_lm, hub_inputs, samplers.GreedySampler())
    # Stop on the first token greedy writes for row 0 after its first new one that it has not
    # written before, so the stop cannot fire earlier.
    at = next(t for t in range(5, 12) if free[0, t] not in free[0, 4:t])
    out = hub_generate(hub_lm, hub_inputs, samplers.GreedySampler(),
                       stop_token_ids=[int(free[0, at])])
    np.testing.assert_array_equal(out[0, :at + 1], free[0, :at + 1])
    assert not out[0, at + 1:].any(), "tokens after the stop token must be padding"


@pytest.fixture(scope="module")
def kzoo_model():
    return CausalLM.from_preset("gpt_nano", vocab_size=48, max_sequence_length=48)


PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12]]


def test_keras_hub_samplers_in_kzoo_generate(kzoo_model):
    greedy = Generator(kzoo_model, "greedy").generate(PROMPTS, max_new_tokens=8).token_ids
    for hub_sampler in (keras_hub.samplers.GreedySampler(),
                        keras_hub.samplers.TopKSampler(k=1, seed=0),
                        keras_hub.samplers.BeamSampler(num_beams=1)):
        out = Generator(kzoo_model, hub_sampler).generate(PROMPTS, max_new_tokens=8).token_ids
        assert out == greedy, type(hub_sampler).__name__


def test_keras_hub_beam_and_kzoo_beam_agree_in_kzoo(kzoo_model):
    ours = Generator(kzoo_model, samplers.BeamSampler(num_beams=3))
    theirs = Generator(kzoo_model, keras_hub.samplers.BeamSampler(num_beams=3))
    assert (ours.generate(PROMPTS, max_new_tokens=6).token_ids
            == theirs.generate(PROMPTS, max_new_tokens=6).token_ids)


def test_keras_hub_top_k_sampler_is_seeded_by_kzoo(kzoo_model):
    generator = Generator(kzoo_model, keras_hub.samplers.TopKSampler(k=5, seed=1))
    a = generator.generate(PROMPTS, max_new_tokens=8, seed=3).token_ids
    b = generator.generate(PROMPTS, max_new_tokens=8, seed=3).token_ids
    assert a == b
