"""next_word_distribution: exact probabilities, temperature behaviour, terminal bars and PNG."""

import numpy as np
import pytest

from kzoo.generation import next_word_distribution, plot_distributions, temperature_sweep
from kzoo.tokenizers import ByteTokenizer


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_top_k_probabilities_match_the_model(gpt):
    prompt = [5, 6, 7, 8]
    logits = np.asarray(gpt(np.array([prompt])))[0, -1].astype("float64")
    for temperature in (1.0, 0.5):
        dist = next_word_distribution(gpt, prompt, k=5, temperature=temperature)
        probs = softmax(logits / temperature)
        assert dist.token_ids == list(np.argsort(-probs)[:5])
        np.testing.assert_allclose(dist.probs, np.sort(probs)[::-1][:5], rtol=1e-4)
    assert len(next_word_distribution(gpt, prompt, k=1000).token_ids) == gpt.vocab_size


def test_temperature_sharpens_or_flattens(gpt):
    dists = temperature_sweep(gpt, [5, 6, 7], temperatures=(0.25, 1.0, 4.0), k=5)
    tops = [d.probs[0] for d in dists]
    assert tops[0] > tops[1] > tops[2]
    assert all(d.token_ids == dists[0].token_ids for d in dists)


def test_bars_and_png(gpt, tmp_path):
    from kzoo.models import CausalLM

    model = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=32)
    dist = next_word_distribution(model, "To be", k=4, tokenizer=ByteTokenizer())
    text = dist.bars(width=20)
    lines = text.splitlines()
    assert len(lines) == 5 and "temperature 1" in lines[0]
    assert lines[1].count("\u2588") == 20  # the top token gets the full bar
    assert f"{dist.probs[0]:6.1%}" in lines[1]
    png = dist.to_png(tmp_path / "next.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sweep = temperature_sweep(gpt, [5, 6], k=3)
    assert plot_distributions(sweep, tmp_path / "sub" / "sweep.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), "k > 0"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=0.0), "temperature"),
        (dict(prompt=[]), "is empty"),
        (dict(prompt=[[]]), "prompt 0 is empty"),
        (dict(prompt=list(range(1, 40)) * 2), "max_sequence_length"),
    ],
)
def test_bad_input(gpt, kwargs, message):
    kwargs = {"prompt": [1, 2], **kwargs}
    with pytest.raises(ValueError, match=message):
        next_word_distribution(gpt, **kwargs)


def test_png_path_must_be_png(gpt, tmp_path):
    with pytest.raises(ValueError, match=".png"):
        next_word_distribution(gpt, [1, 2], k=2).to_png(tmp_path / "x.jpg")


def test_truncate_keeps_the_end_of_a_long_prompt(gpt):
    long = list(range(1, 40)) * 2  # 78 tokens, the context is 64
    tail = next_word_distribution(gpt, long[-gpt.max_sequence_length:], k=5)
    for dist in (next_word_distribution(gpt, long, k=5, truncate=True),
                 gpt.next_word_distribution(long, k=5, truncate=True),
                 temperature_sweep(gpt, long, temperatures=(1.0,), k=5, truncate=True)[0]):
        assert dist.token_ids == tail.token_ids
        np.testing.assert_allclose(dist.probs, tail.probs, rtol=1e-6)
    for call in (lambda: gpt.next_word_distribution(long), lambda: temperature_sweep(gpt, long)):
        with pytest.raises(ValueError, match="truncate=True"):
            call()
