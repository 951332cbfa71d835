"""Speculative decoding (prompt lookup and draft models): greedy gives exactly plain greedy's
tokens on models where drafts hit and where they miss, ragged batches, stops, log-probs,
streaming, the acceptance statistics, the n-gram lookup itself, and bad input. The sampling
rule's distribution is tested in test_speculative_sampling.py."""

import keras
import numpy as np
import pytest
from keras import ops

from kzoo import samplers
from kzoo.generation import Generator, generate, stream
from kzoo.generation.drafts import lookup_drafts
from kzoo.generation.inputs import NO_TOKEN
from kzoo.models import CausalLM

PROMPTS = [[5, 6, 7, 5, 6, 7, 5, 6], [8, 9, 10, 11, 12, 13, 14], [20]]
# What is generated, not compilation: plain TF graphs trace faster than XLA compiles; eager JAX
# dispatches op by op, slower than one XLA program.
GRAPH = {"jit_compile": keras.backend.backend() == "jax"}


def _scaled(model, factor):
    """Random weights times `factor`: a random nano model mostly repeats its last token (drafts
    hit); scaled up, its greedy text wanders (prompt-lookup drafts mostly miss)."""
    for v in model.weights:
        if "embedding" in v.path or "kernel" in v.path:
            v.assign(ops.convert_to_numpy(v) * factor)
    return model


def _noisy_copy(model, scale, seed=0):
    """A draft model: the target's weights plus noise, so some drafts match and some do not."""
    rng = np.random.default_rng(seed)
    draft = CausalLM.from_config(model.get_config())
    draft(np.zeros((1, 2), "int32"))  # build
    for d, v in zip(draft.weights, model.weights):
        value = ops.convert_to_numpy(v)
        d.assign(value + rng.normal(0, scale, value.shape) * (value.std() + 1e-6))
    return draft


@pytest.fixture(scope="module")
def repeating():
    keras.utils.set_random_seed(0)
    return CausalLM.from_preset("gpt_nano", vocab_size=48, max_sequence_length=64)


@pytest.fixture(scope="module")
def wandering():
    keras.utils.set_random_seed(0)
    return _scaled(CausalLM.from_preset("llama_nano", vocab_size=48, max_sequence_length=64), 4)


@pytest.fixture(scope="module")
def noisy_draft(wandering):
    return _noisy_copy(wandering, 0.3)


def _plain(model, prompts=PROMPTS, n=16, **kwargs):
    return Generator(model, "greedy", **GRAPH).generate(prompts, max_new_tokens=n,
                                                        return_logprobs=True, **kwargs)


@pytest.mark.parametrize("family", ["repeating", "wandering"])
def test_prompt_lookup_greedy_gives_plain_greedys_tokens_and_logprobs(family, request):
    model = request.getfixturevalue(family)
    plain = _plain(model)
    generator = Generator(model, "greedy", draft="prompt_lookup", num_draft_tokens=3, **GRAPH)
    result = generator.generate(PROMPTS, max_new_tokens=16, return_logprobs=True)
    assert result.token_ids == plain.token_ids
    for ours, theirs in zip(result.logprobs, plain.logprobs):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    stats = result.stats
    assert 0 <= sum(stats["accepted"]) <= sum(stats["drafted"])
    if family == "repeating":  # drafts hit: fewer target forwards than tokens
        assert stats["acceptance_rate"] > 0.5
        assert stats["target_forwards"] < 16
    else:  # both outcomes were exercised
        assert 0 < stats["acceptance_rate"] < 1


def test_draft_model_greedy_gives_plain_greedys_tokens_on_a_ragged_batch(wandering,
                                                                        noisy_draft):
    plain = _plain(wandering)
    result = generate(wandering, PROMPTS, 16, draft=noisy_draft, num_draft_tokens=3,
                      return_logprobs=True, **GRAPH)
    assert result.token_ids == plain.token_ids
    for ours, theirs in zip(result.logprobs, plain.logprobs):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    accepted, drafted = result.stats["accepted"], result.stats["drafted"]
    assert len(set(accepted)) > 1  # rows accepted different counts (holes were left)
    assert all(a <= d for a, d in zip(accepted, drafted))
    assert 0 < result.stats["acceptance_rate"] < 1


def test_the_target_as_its_own_draft_accepts_everything(repeating):
    result = generate(repeating, [[3, 4, 5]], 13, draft=repeating, num_draft_tokens=3,
                      **GRAPH)
    assert result.token_ids == _plain(repeating, [[3, 4, 5]], 13).token_ids
    assert result.stats["acceptance_rate"] == 1.0
    assert result.stats["target_forwards"] == 1 + 3  # prefill, then 4 tokens per forward


@pytest.mark.parametrize("draft", ["prompt_lookup", "noisy"])
def test_stops_and_lengths_match_plain_greedy(draft, wandering, noisy_draft):
    draft = noisy_draft if draft == "noisy" else draft
    plain = _plain(wandering)
    stop_token = plain.token_ids[1][5]
    sequence = plain.token_ids[2][3:5]
    kwargs = {"stop_token_ids": [stop_token], "stop_sequences": [sequence]}
    expected = _plain(wandering, **kwargs)
    assert "stop" in expected.finish_reasons
    for n in (16, 11):  # a limit inside a chunk as well
        expected = _plain(wandering, n=n, **kwargs)
        result = generate(wandering, PROMPTS, n, draft=draft, num_draft_tokens=4,
                          return_logprobs=True, **kwargs, **GRAPH)
        assert result.token_ids == expected.token_ids
        assert result.finish_reasons == expected.finish_reasons
        assert [len(lp) for lp in result.logprobs] == [len(t) for t in result.token_ids]


@pytest.mark.parametrize("draft", ["prompt_lookup", "noisy"])
def test_stream_yields_what_generate_returns(draft, wandering, noisy_draft):
    draft = noisy_draft if draft == "noisy" else draft
    generator = Generator(wandering, "greedy", draft=draft, num_draft_tokens=3, **GRAPH)
    expected = _plain(wandering, [PROMPTS[1]], 12).token_ids[0]
    assert list(generator.stream(PROMPTS[1], max_new_tokens=12)) == expected
    stop = expected[6:8]
    got = list(stream(wandering, PROMPTS[1], 12, draft=draft, num_draft_tokens=3,
                      stop_sequences=[stop], **GRAPH))
    cut = next(i for i in range(len(expected)) if expected[i:i + 2] == stop)
    assert got == expected[:cut]


def test_compiled_program_is_reused_across_lengths_and_prompts(repeating):
    generator = Generator(repeating, "greedy", draft="prompt_lookup", num_draft_tokens=2)
    first = generator.generate(PROMPTS, max_new_tokens=9)
    traces = generator.trace_count
    second = generator.generate([p[::-1] for p in PROMPTS], max_new_tokens=12)
    assert generator.trace_count == traces
    assert first.token_ids == _plain(repeating, n=9).token_ids
    assert second.token_ids == _plain(repeating, [p[::-1] for p in PROMPTS], 12).token_ids


def test_sliding_window_model_decodes_exactly_in_lockstep():
    keras.utils.set_random_seed(1)
    model = _scaled(CausalLM.from_preset("gemma3_nano", vocab_size=48, max_sequence_length=64,
                                         sliding_window=6), 3)
    draft = _noisy_copy(model, 0.3)
    plain = _plain(model, n=20)
    result = generate(model, PROMPTS, 20, draft=draft, num_draft_tokens=3, **GRAPH)
    assert result.token_ids == plain.token_ids


def _text(rows):
    width = max(map(len, rows)) + 4
    text = np.full((len(rows), width), NO_TOKEN, "int32")
    for r, row in enumerate(rows):
        text[r, :len(row)] = row
    return text, np.array([len(r) for r in rows], "int32")


def test_lookup_drafts_take_the_longest_match_with_the_most_continuation():
    text, end = _text([
        [1, 2, 3, 9, 1, 2, 4, 8, 2],  # last 1-gram [2]: latest earlier one is followed by 4, 8
        [1, 2, 3, 9, 7, 2, 4, 8, 1, 2],  # 2-gram [1, 2] beats the later 1-gram match [2]
        [5, 6, 7],  # no earlier occurrence: no drafts
        [4, 5, 4],  # match near the end: two continuation tokens only
        [7, 7, 7, 7, 7],  # a repeating tail: the occurrence followed by k tokens, not the latest
    ])
    drafts, valid = (ops.convert_to_numpy(t) for t in lookup_drafts(text, end, 3, 2))
    assert drafts[0].tolist() == [4, 8, 2] and valid[0].all()
    assert drafts[1].tolist() == [3, 9, 7] and valid[1].all()
    assert not valid[2].any()
    assert valid[3].tolist() == [True, True, False] and drafts[3, :2].tolist() == [5, 4]
    assert drafts[4].tolist() == [7, 7, 7] and valid[4].all()


def test_bad_input_gets_one_clear_line(repeating):
    other = CausalLM.from_preset("gpt_nano", vocab_size=50, max_sequence_length=64)
    with pytest.raises(ValueError, match="vocab_size=50.*vocab_size=48"):
        Generator(repeating, draft=other)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_draft_tokens"):
            Generator(repeating, draft="prompt_lookup", num_draft_tokens=bad)
    with pytest.raises(ValueError, match="max_ngram"):
        Generator(repeating, draft="prompt_lookup", max_ngram=0)
    with pytest.raises(ValueError, match="Beam search does not combine.*greedy and sampling"):
        Generator(repeating, samplers.get("beam"), draft="prompt_lookup")
    with pytest.raises(ValueError, match="Unknown `draft`.*prompt_lookup"):
        Generator(repeating, draft="ngram")
    with pytest.raises(ValueError, match="penalties"):
        Generator(repeating, samplers.Sampler(repetition_penalty=1.2), draft="prompt_lookup")
