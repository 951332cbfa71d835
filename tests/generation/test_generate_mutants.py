"""Generation checked against a full forward pass recomputed in NumPy, in the corners the
mutation tester found unguarded: log-probs under temperature and filters, beams, penalties,
padding, positions and stop bookkeeping.

The reference for every step is `model(prompt + tokens so far)` without a cache, and its
temperature-1 log-softmax in float64: the distribution `GenerationResult.logprobs` promises.
"""

import inspect

import numpy as np
import pytest

from kzoo import samplers
from kzoo.generation import Generator, generate, get_generator, loops, stream
from kzoo.generation import inputs as inputs_lib
from kzoo.models import CausalLM
from tests.generation.reference import causal_logits

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20]]
GRAPH = {"jit_compile": False}


def log_softmax(logits):
    logits = np.asarray(logits, "float64")
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def reference_logprobs(model, prompt, tokens):
    """log p(token_t | prompt, tokens before t) at temperature 1, from one uncached forward."""
    if not tokens:
        return np.zeros(0)
    logp = log_softmax(causal_logits(model, prompt + tokens[:-1]))  # (len, vocab)
    return np.array([logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(tokens)])


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_logprobs_are_the_temperature_one_log_softmax_of_the_logits(gpt, temperature):
    """The docstring's promise: the model's own distribution, whatever the sampling knobs."""
    for sampler in (samplers.RandomSampler(temperature=temperature),
                    samplers.TopKSampler(k=3, temperature=temperature)):
        result = generate(gpt, PROMPTS, 8, sampler=sampler, seed=3, return_logprobs=True,
                          **GRAPH)
        for prompt, tokens, logprobs in zip(PROMPTS, result.token_ids, result.logprobs):
            assert len(tokens) == len(logprobs) == 8
            np.testing.assert_allclose(logprobs, reference_logprobs(gpt, prompt, tokens),
                                       atol=1e-4)


def test_beam_logprobs_are_temperature_one_and_follow_the_best_beam(gpt):
    result = generate(gpt, PROMPTS, 6, sampler=samplers.BeamSampler(num_beams=3, temperature=2.0),
                      return_logprobs=True, **GRAPH)
    for prompt, tokens, logprobs in zip(PROMPTS, result.token_ids, result.logprobs):
        assert len(tokens) == 6
        np.testing.assert_allclose(logprobs, reference_logprobs(gpt, prompt, tokens), atol=1e-4)


def test_beam_search_returns_the_best_beam_without_xla(gpt):
    """num_beams = vocab keeps every first token, so two steps are an exhaustive search; the
    best pair must come out also where top_k is not sorted for free (graph mode, not XLA)."""
    prompt = [5, 6, 7]
    vocab = gpt.vocab_size
    first = log_softmax(np.asarray(gpt(np.array([prompt])))[0, -1])
    second = log_softmax(np.asarray(gpt(np.array([prompt + [a] for a in range(vocab)])))[:, -1])
    totals = first[:, None] + second
    best = [int(t) for t in np.unravel_index(totals.argmax(), totals.shape)]
    result = generate(gpt, [prompt], 2, sampler=samplers.BeamSampler(num_beams=vocab),
                      return_logprobs=True, **GRAPH)
    assert result.token_ids[0] == best
    np.testing.assert_allclose(sum(result.logprobs[0]), totals.max(), atol=1e-4)


def test_beam_search_keeps_prompts_apart(gpt):
    """Each prompt's beams must follow their own parents: batched equals one at a time."""
    sampler = samplers.BeamSampler(num_beams=3)
    batched = generate(gpt, PROMPTS, 5, sampler=sampler, **GRAPH).token_ids
    for prompt, tokens in zip(PROMPTS, batched):
        assert generate(gpt, [prompt], 5, sampler=sampler, **GRAPH).token_ids[0] == tokens


def test_beam_stop_token_freezes_a_beam(gpt):
    sampler = samplers.BeamSampler(num_beams=2)
    free = generate(gpt, [PROMPTS[1]], 8, sampler=sampler, return_logprobs=True, **GRAPH)
    tokens = free.token_ids[0]
    stop = tokens[2]
    result = generate(gpt, [PROMPTS[1]], 8, sampler=sampler, stop_token_ids=[stop],
                      return_logprobs=True, **GRAPH)
    assert result.finish_reasons == ["stop"]
    out = result.token_ids[0]
    assert stop not in out and len(out) == len(result.logprobs[0])
    np.testing.assert_allclose(result.logprobs[0],
                               reference_logprobs(gpt, PROMPTS[1], out), atol=1e-4)


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_batched_rows_of_different_lengths_equal_single_prompts(family, request):
    """Left padding, per-row positions and the padding mask: each row as if alone."""
    model = request.getfixturevalue(family)
    batched = generate(model, PROMPTS, 6, return_logprobs=True, **GRAPH)
    for prompt, tokens, logprobs in zip(PROMPTS, batched.token_ids, batched.logprobs):
        alone = generate(model, [prompt], 6, **GRAPH).token_ids[0]
        assert tokens == alone
        np.testing.assert_allclose(logprobs, reference_logprobs(model, prompt, tokens),
                                   atol=1e-4)


def test_frequency_penalty_counts_prompt_and_generated_tokens(gpt):
    """A huge frequency penalty on greedy decoding: never a token already in the sequence."""
    sampler = samplers.GreedySampler(frequency_penalty=1e6)
    for prompt, tokens in zip(PROMPTS, generate(gpt, PROMPTS, 12, sampler=sampler,
                                                **GRAPH).token_ids):
        assert len(set(prompt + tokens)) == len(prompt + tokens)


def test_penalised_sampling_matches_the_sampler_on_recomputed_counts(gpt):
    """Each greedy step with penalties equals the sampler applied to the full-forward logits
    and the counts of the real tokens so far (prompt pads excluded)."""
    sampler = samplers.GreedySampler(repetition_penalty=1.5, presence_penalty=0.7,
                                     frequency_penalty=0.3)
    tokens = generate(gpt, PROMPTS, 8, sampler=sampler, **GRAPH).token_ids
    for prompt, new in zip(PROMPTS, tokens):
        for t, tok in enumerate(new):
            seq = prompt + new[:t]
            logits = causal_logits(gpt, seq)[-1:].astype("float32")  # (1, vocab)
            counts = np.bincount(seq, minlength=gpt.vocab_size)[None].astype("float32")
            assert int(sampler(logits, token_counts=counts)[0]) == tok


def test_stop_sequences_end_rows_independently_and_trim_the_stop(gpt):
    free = generate(gpt, PROMPTS, 10, return_logprobs=True, **GRAPH)
    row = free.token_ids[0]
    stop = row[3:5]
    result = generate(gpt, PROMPTS, 10, stop_sequences=[stop], return_logprobs=True, **GRAPH)
    end = next(i for i in range(1, 10) if row[i - 1:i + 1] == stop)
    assert result.token_ids[0] == row[:end - 1]
    assert result.finish_reasons[0] == "stop"
    np.testing.assert_allclose(result.logprobs[0], free.logprobs[0][:end - 1], atol=1e-5)
    for r in (1, 2):
        seq = free.token_ids[r]
        hit = next((i for i in range(1, 10) if seq[i - 1:i + 1] == stop), None)
        expected = seq if hit is None else seq[:hit - 1]
        assert result.token_ids[r] == expected
        assert result.finish_reasons[r] == ("length" if hit is None else "stop")


def test_max_new_tokens_below_the_bucket_and_stream_agree(gpt):
    generator = Generator(gpt, "greedy", **GRAPH)
    full = generator.generate(PROMPTS, 9).token_ids
    for n in (1, 3):
        assert generator.generate(PROMPTS, n).token_ids == [t[:n] for t in full]
    assert list(generator.stream(PROMPTS[1], 9)) == full[1]
    assert list(generator.stream(PROMPTS[1], 1)) == full[1][:1]


def test_stream_is_the_same_draw_as_generate_with_penalties(gpt):
    generator = Generator(gpt, samplers.GreedySampler(presence_penalty=2.0), **GRAPH)
    expected = generator.generate([PROMPTS[0]], 10).token_ids[0]
    assert list(generator.stream(PROMPTS[0], 10)) == expected


def test_stop_match_reports_the_longest_matching_stop():
    table = inputs_lib.stop_table([7], [[3, 4, 7], [4, 9]])
    window = np.full((3, table.shape[1]), inputs_lib.NO_TOKEN, "int32")
    window[0, -3:] = [3, 4, 7]  # ends with both [7] and [3, 4, 7]
    window[1, -2:] = [4, 9]
    window[2, -2:] = [9, 4]  # no stop
    hit, length = loops.stop_match(window, table)
    np.testing.assert_array_equal(np.asarray(hit), [True, True, False])
    np.testing.assert_array_equal(np.asarray(length), [3, 2, 0])


def test_left_pad_buckets_and_positions():
    batch = inputs_lib.left_pad([[1, 2, 3], [4]], max_new_tokens=5, context=64, pad_id=9)
    assert batch.new_slots == 16 and batch.token_ids.shape == (2, 16)
    np.testing.assert_array_equal(batch.token_ids[0, -3:], [1, 2, 3])
    assert (batch.token_ids[1, :-1] == 9).all() and batch.token_ids[1, -1] == 4
    np.testing.assert_array_equal(batch.lengths, [3, 1])
    # Clipped to the context: P + N never exceeds it, and both still hold what they must.
    tight = inputs_lib.left_pad([list(range(20))], max_new_tokens=10, context=32)
    assert tight.new_slots + tight.token_ids.shape[1] <= 32
    assert tight.new_slots >= 10 and tight.token_ids.shape[1] >= 20
    assert [inputs_lib.bucket(n) for n in (0, 1, 16, 17, 33)] == [16, 16, 16, 32, 64]
    assert inputs_lib.bucket(3, minimum=1) == 4 and inputs_lib.bucket(1, minimum=1) == 1


def test_fine_prompt_buckets_pad_less_and_generate_the_same_tokens():
    assert [inputs_lib.fine_bucket(n) for n in (5, 40, 64, 65, 75, 130, 200)] == [
        16, 64, 64, 80, 80, 160, 224]
    fine = inputs_lib.left_pad([list(range(1, 76))], max_new_tokens=4, context=256,
                               prompt_bucket=inputs_lib.fine_bucket)
    assert fine.token_ids.shape == (1, 80)  # a power of two would be 128
    gpt = CausalLM.from_preset("gpt_nano", vocab_size=96, max_sequence_length=256)
    prompts = [list(range(3, 3 + n)) for n in (70, 75, 41)]
    plain = Generator(gpt, **GRAPH).generate(prompts, max_new_tokens=5)
    padded_less = Generator(gpt, prompt_bucket=inputs_lib.fine_bucket, **GRAPH)
    assert padded_less.generate(prompts, max_new_tokens=5).token_ids == plain.token_ids
    assert padded_less._prepare(prompts, 5, None, False)[2].token_ids.shape == (3, 80)


def test_compile_mode_and_defaults_reach_the_generator(gpt):
    assert get_generator(gpt, "greedy", jit_compile=False).jit_compile is False
    assert get_generator(gpt, "greedy").jit_compile is True  # XLA unless asked otherwise
    assert Generator(gpt).jit_compile is True and Generator(gpt).pad_id == 0
    # One default length of generation across the API (64 new tokens).
    functions = [generate, stream, Generator.generate, Generator.stream, CausalLM.generate,
                 CausalLM.stream]
    defaults = {f.__qualname__: inspect.signature(f).parameters["max_new_tokens"].default
                for f in functions}
    assert set(defaults.values()) == {64}, defaults
    padded = inputs_lib.left_pad([[1, 2], [3]], max_new_tokens=4, context=64)
    assert (padded.token_ids[1, :-1] == 0).all()  # pad id 0 by default
