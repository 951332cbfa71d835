"""Streaming: the same tokens as `generate`, delivered one at a time, stops honoured."""

import pytest

from kzoo import samplers
from kzoo.generation import Generator, stream
from kzoo.tokenizers import ByteTokenizer


def test_stream_yields_what_generate_returns(gpt):
    generator = Generator(gpt, "greedy", jit_compile=False)
    expected = generator.generate([[5, 6, 7]], max_new_tokens=10).token_ids[0]
    streamed = generator.stream([5, 6, 7], max_new_tokens=10)
    first = next(streamed)  # a token arrives before the rest are computed
    assert first == expected[0]
    assert [first, *streamed] == expected


def test_stream_honours_stop_sequences_and_holds_back_partial_matches(gpt):
    generator = Generator(gpt, "greedy", jit_compile=False)
    free = generator.generate([[8, 9, 10]], max_new_tokens=12).token_ids[0]
    pair = free[6:8]
    expected = generator.generate([[8, 9, 10]], max_new_tokens=12,
                                  stop_sequences=[pair]).token_ids[0]
    assert list(generator.stream([8, 9, 10], 12, stop_sequences=[pair])) == expected
    stop = free[3]
    assert list(generator.stream([8, 9, 10], 12, stop_token_ids=[stop])) == free[:free.index(stop)]


def test_stream_is_seeded(gpt):
    sampler = samplers.TopKSampler(k=5)
    a = list(stream(gpt, [1, 2, 3], 12, sampler=sampler, seed=9, jit_compile=False))
    b = list(stream(gpt, [1, 2, 3], 12, sampler=sampler, seed=9, jit_compile=False))
    assert a == b and len(a) == 12


def test_stream_text_pieces_join_to_the_generated_text():
    from kzoo.models import CausalLM

    model = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=32)
    tokenizer = ByteTokenizer()
    generator = Generator(model, "greedy", tokenizer=tokenizer, jit_compile=False)
    pieces = list(generator.stream("Once upon", max_new_tokens=12))
    assert all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == generator.generate("Once upon", max_new_tokens=12).texts[0]


def test_stream_rejects_beams_and_batches(gpt):
    with pytest.raises(ValueError, match="beam search"):
        next(Generator(gpt, samplers.BeamSampler(num_beams=2)).stream([1, 2], 4))
    with pytest.raises(ValueError, match="one prompt"):
        next(Generator(gpt, "greedy").stream([[1, 2], [3]], 4))
