"""KV-cached, compiled generation: exactness against the full forward pass, padding, stops,
log-probs, beams, seeding, no retracing, and bad input."""

import numpy as np
import pytest

from kzoo import samplers
from kzoo.generation import Generator, generate, get_generator
from kzoo.tokenizers import ByteTokenizer
from tests.generation.reference import causal_logits

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20]]
# Tests about what is generated, not about compilation, skip XLA: tracing alone is faster.
GRAPH = {"jit_compile": False}


@pytest.fixture(scope="module")
def byte_model():
    import keras

    from kzoo.models import CausalLM

    keras.utils.set_random_seed(3)  # the same weights whichever tests ran before
    return CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=32)


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_greedy_with_cache_equals_full_forward_argmax_every_step(family, request,
                                                                 full_forward_greedy):
    model = request.getfixturevalue(family)
    generator = Generator(model, "greedy")
    result = generator.generate(PROMPTS, max_new_tokens=12, return_logprobs=True)
    for prompt, tokens, logprobs in zip(PROMPTS, result.token_ids, result.logprobs):
        expected, expected_logprobs = full_forward_greedy(model, prompt, 12)
        assert tokens == expected
        np.testing.assert_allclose(logprobs, expected_logprobs, atol=1e-4)
    assert result.finish_reasons == ["length"] * 3


def test_graph_mode_without_xla_gives_the_same_tokens(gpt):
    xla = Generator(gpt, "greedy").generate(PROMPTS, max_new_tokens=6).token_ids
    graph = Generator(gpt, "greedy", jit_compile=False).generate(PROMPTS, max_new_tokens=6)
    assert graph.token_ids == xla


def test_left_and_right_padded_arrays_equal_ragged_lists(gpt):
    ragged = generate(gpt, PROMPTS, max_new_tokens=5, **GRAPH).token_ids
    width = max(map(len, PROMPTS))
    right = np.zeros((3, width), "int32")
    left = np.zeros((3, width), "int32")
    for r, p in enumerate(PROMPTS):
        right[r, :len(p)] = p
        left[r, width - len(p):] = p
    assert generate(gpt, right, 5, padding_mask=right > 0, **GRAPH).token_ids == ragged
    assert generate(gpt, {"token_ids": left, "padding_mask": left > 0}, 5,
                    **GRAPH).token_ids == ragged
    assert generate(gpt, PROMPTS[1], 5, **GRAPH).token_ids == [ragged[1]]  # one flat prompt


def test_same_bucket_does_not_retrace(gpt):
    generator = Generator(gpt, samplers.TopKSampler(k=4))
    generator.generate([[1, 2, 3]], max_new_tokens=10, seed=1)
    assert generator.trace_count == 1
    # New prompt of another length, another max_new_tokens, other stop ids: same buckets.
    generator.generate([[4, 5, 6, 7, 8, 9]], max_new_tokens=13, stop_token_ids=[3], seed=2)
    generator.generate([[9]], max_new_tokens=16, stop_token_ids=[7], seed=3)
    assert generator.trace_count == 1
    generator.generate([list(range(1, 40))], max_new_tokens=10)  # a longer prompt bucket
    assert generator.trace_count == 2


def test_stop_token_and_multi_token_stop_sequence(gpt):
    free = generate(gpt, PROMPTS, max_new_tokens=12).token_ids
    row = free[1]
    stop = row[4]
    first = row.index(stop)
    result = generate(gpt, PROMPTS, max_new_tokens=12, stop_token_ids=[stop],
                      return_logprobs=True)
    assert result.token_ids[1] == row[:first]
    assert result.finish_reasons[1] == "stop"
    assert len(result.logprobs[1]) == first
    for r in (0, 2):  # the other rows stop at their own first `stop`, or run to the end
        expected = free[r][:free[r].index(stop)] if stop in free[r] else free[r]
        assert result.token_ids[r] == expected
    pair = row[5:7]
    end = next(i for i in range(1, 12) if row[i - 1:i + 1] == pair)  # first occurrence
    seq = generate(gpt, PROMPTS, max_new_tokens=12, stop_sequences=[pair]).token_ids[1]
    assert seq == row[:end - 1]


def test_stop_sequences_as_text(byte_model):
    tokenizer = ByteTokenizer()
    free = generate(byte_model, "Hello", 10, tokenizer=tokenizer, **GRAPH)
    text = free.texts[0]
    # Two ASCII bytes: text that encodes back to the same ids (a lone byte of a UTF-8
    # character decodes to U+FFFD, which does not).
    ids = free.token_ids[0]
    starts = [i for i in range(1, len(ids) - 1) if ids[i] < 128 and ids[i + 1] < 128]
    assert starts, ids
    stop = tokenizer.decode(ids[starts[0]:starts[0] + 2])
    result = generate(byte_model, "Hello", 10, tokenizer=tokenizer, stop_sequences=[stop],
                      **GRAPH)
    assert result.texts[0] == text[:text.index(stop)]
    assert result.finish_reasons == ["stop"]


def test_beam_with_one_beam_equals_greedy(gpt):
    greedy = generate(gpt, PROMPTS, max_new_tokens=8).token_ids
    assert generate(gpt, PROMPTS, 8, sampler=samplers.BeamSampler(num_beams=1)).token_ids == greedy


def test_beam_search_with_vocab_beams_finds_the_best_two_token_continuation(gpt):
    prompt = [5, 6, 7]
    vocab = gpt.vocab_size
    first = np.asarray(gpt(np.array([prompt])))[0, -1]
    first = first - np.log(np.exp(first - first.max()).sum()) - first.max()
    candidates = np.array([prompt + [a] for a in range(vocab)], "int32")
    second = np.asarray(gpt(candidates))[:, -1]
    second = second - second.max(-1, keepdims=True)
    second = second - np.log(np.exp(second).sum(-1, keepdims=True))
    totals = first[:, None] + second  # (first token, second token) log p
    best = list(np.unravel_index(totals.argmax(), totals.shape))
    result = generate(gpt, [prompt], 2, sampler=samplers.BeamSampler(num_beams=vocab),
                      return_logprobs=True)
    assert result.token_ids[0] == [int(t) for t in best]
    np.testing.assert_allclose(sum(result.logprobs[0]), totals.max(), atol=1e-4)


def test_same_seed_same_tokens_and_near_zero_temperature_is_greedy(gpt):
    generator = Generator(gpt, samplers.TopPSampler(p=0.95, temperature=1.5))
    a = generator.generate(PROMPTS, max_new_tokens=16, seed=123).token_ids
    b = generator.generate(PROMPTS, max_new_tokens=16, seed=123).token_ids
    c = generator.generate(PROMPTS, max_new_tokens=16, seed=124).token_ids
    assert a == b and a != c
    cold = generate(gpt, PROMPTS, 10, sampler=samplers.RandomSampler(temperature=1e-5), seed=0)
    assert cold.token_ids == generate(gpt, PROMPTS, 10).token_ids


def test_top_k_generation_stays_in_the_top_k(gpt):
    result = generate(gpt, PROMPTS[:2], 10, sampler=samplers.TopKSampler(k=2, temperature=3.0),
                      seed=5, **GRAPH)
    for prompt, tokens in zip(PROMPTS, result.token_ids):
        logits = causal_logits(gpt, prompt + tokens)
        for t, token in enumerate(tokens):
            assert token in np.argsort(-logits[len(prompt) + t - 1])[:2]


def test_presence_penalty_forbids_repeats(gpt):
    sampler = samplers.GreedySampler(presence_penalty=1e6)
    result = generate(gpt, PROMPTS, 20, sampler=sampler, **GRAPH)
    for prompt, tokens in zip(PROMPTS, result.token_ids):
        seq = prompt + tokens
        assert len(set(seq)) == len(seq)
    beam = samplers.BeamSampler(num_beams=2, presence_penalty=1e6)
    for prompt, tokens in zip(PROMPTS, generate(gpt, PROMPTS, 20, sampler=beam, **GRAPH).token_ids):
        assert len(set(prompt + tokens)) == len(prompt + tokens)


def test_text_in_text_out_and_sliding_window(byte_model):
    model = byte_model
    tokenizer = ByteTokenizer()
    result = generate(model, ["Hi", "Hello there"], 6, tokenizer=tokenizer, **GRAPH)
    assert [tokenizer.decode(ids) for ids in result.token_ids] == result.texts
    long_prompt = "x" * 40
    with pytest.raises(ValueError, match="truncate=True"):
        generate(model, long_prompt, 6, tokenizer=tokenizer)
    window = generate(model, long_prompt, 6, tokenizer=tokenizer, truncate=True, **GRAPH)
    assert window.prompt_token_ids[0] == list(tokenizer.encode("x" * 26))
    assert window.token_ids == generate(model, "x" * 26, 6, tokenizer=tokenizer,
                                        **GRAPH).token_ids


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[[]]), "prompt 0 is empty"),
        (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
        (dict(prompts=[]), "`prompts` is empty"),
        (dict(prompts=3.5), "`prompts` must be"),
        (dict(prompts="hello"), "need a tokenizer"),
        (dict(prompts=[[1, 99]]), r"outside \[0, 48\)"),
        (dict(prompts=[list(range(1, 48)) * 2]), "max_sequence_length"),
        (dict(prompts=[[1]], max_new_tokens=0), "max_new_tokens"),
        (dict(prompts=[[1]], max_new_tokens=64), "max_new_tokens"),
        (dict(prompts=[[1]], stop_sequences=[[]]), r"stop_sequences\[0\] is empty"),
        (dict(prompts=[[1]], stop_sequences=[[2], ""]), r"stop_sequences\[1\] is an empty"),
        (dict(prompts=[[1]], sampler="nucleus"), "Valid names"),
        (dict(prompts=[[1]], seed="x"), "seed"),
    ],
)
def test_bad_input_raises_clear_errors(gpt, kwargs, message):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(gpt, **kwargs)


def test_generators_are_cached_per_sampler_config(gpt):
    assert get_generator(gpt, "greedy") is get_generator(gpt, "greedy")
    assert get_generator(gpt, "greedy") is not get_generator(gpt, "top_k")
    # A config made afresh per call (a text sample at every interval, a rollout at every
    # step) carries a new layer name each time: the same Generator, traced once.
    first, again = (samplers.serialize(samplers.get("top_k", k=5)) for _ in range(2))
    assert first["config"]["name"] != again["config"]["name"]
    assert get_generator(gpt, first) is get_generator(gpt, again)
    assert get_generator(gpt, first) is not get_generator(
        gpt, samplers.serialize(samplers.get("top_k", k=6)))


def test_a_model_and_its_programs_are_freed_once_unused():
    """The cache of Generators must not keep a model alive: a Generator holds its model, so a
    table keyed weakly by the model but holding its Generators kept every model ever generated
    with (and its compiled programs) until the process ended (~29 MB a gpt_nano)."""
    import gc
    import weakref

    from kzoo.models import CausalLM

    model = CausalLM.from_preset("gpt_nano", vocab_size=64, dropout=0.0)
    generate(model, [[1, 2, 3]], max_new_tokens=2, **GRAPH)
    assert get_generator(model, "greedy", jit_compile=False) is get_generator(
        model, "greedy", jit_compile=False)  # still cached while the model lives
    freed = weakref.ref(model)
    del model
    gc.collect()
    assert freed() is None, "the Generator cache kept the model alive"


class CharTokenizer:
    """One character per token id (chr/ord), so a stop string maps onto ids whatever the model
    generates."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_one_stop_string_is_one_stop_sequence(byte_model):
    from kzoo.generation.inputs import stop_table

    tokenizer = ByteTokenizer()
    np.testing.assert_array_equal(stop_table(stop_sequences="x ", tokenizer=tokenizer),
                                  stop_table(stop_sequences=["x "], tokenizer=tokenizer))
    generator = Generator(byte_model, tokenizer=CharTokenizer(), **GRAPH)
    free = generator.generate([5, 6, 7], 12).token_ids[0]
    # The first generated token, then one the model never generates: as one sequence it never
    # matches; read as one stop per character it would stop at the very first token.
    stop = chr(free[0]) + chr(next(i for i in range(256) if i not in free))
    result = generator.generate([5, 6, 7], 12, stop_sequences=stop)
    assert (result.token_ids[0], result.finish_reasons) == (free, ["length"])
    assert list(generator.stream([5, 6, 7], 12, stop_sequences=stop)) == free
