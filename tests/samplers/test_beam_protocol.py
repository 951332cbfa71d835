"""`BeamSampler` against keras_hub's `BeamSampler` and transformers' penalty processor.

Written for the mutants of kzoo/samplers/beam.py that outlived the rest of the suite
(benchmarks/results/mutation.json): the layer call must pass `token_counts` on (a penalty needs
them), the keras_hub protocol call must start at index 0 by default and forward
`stop_token_ids`. Both samplers run the same `next(prompt, cache, index)` on the same prompt.
"""

import keras_hub
import numpy as np
import pytest
import torch
from keras import ops
from transformers import RepetitionPenaltyLogitsProcessor

from kzoo import samplers

VOCAB = 8
LENGTH = 6
STOP = 3  # the stop token of the stop tests; never 0, the padding id
STOP_AT = 2  # the position where every beam's best continuation is STOP


def markov_next(stop_at=None):
    """A keras_hub `next(prompt, cache, index) -> (logits, hidden_states, cache)`: a fixed
    random bigram table read at the previous token (a start row at index 0), plus, when
    `stop_at` is set, a bias that makes STOP by far the likeliest token at that position.
    Token 0 (the prompt's padding) is never likely, so a position left unfilled shows."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(VOCAB + 1, VOCAB)).astype("float32") * 2  # row VOCAB: start
    table[:, 0] = -30.0
    table[:, STOP] -= 4.0  # STOP only where the bias puts it
    bias = np.zeros((LENGTH, VOCAB), "float32")
    if stop_at is not None:
        bias[stop_at, STOP] = 40.0
    table, bias = ops.convert_to_tensor(table), ops.convert_to_tensor(bias)

    def next(prompt, cache, index):
        at_prev = ops.cast(ops.arange(LENGTH) == index - 1, prompt.dtype)[None, :]  # (1, L)
        prev = ops.sum(prompt * at_prev, axis=-1)  # (rows,)
        row = ops.where(index > 0, prev, VOCAB)
        logits = ops.take(table, row, axis=0) + ops.take(bias, index, axis=0)[None, :]
        return logits, None, cache  # (rows, VOCAB)

    return next


def prompt(rows=2):
    return np.zeros((rows, LENGTH), "int32")


# ---- the layer call: (batch, vocab) logits -> the num_beams best ids, best first -----------

def test_layer_call_ranks_by_penalised_log_probabilities():
    """Penalties need `token_counts`: the call must pass them to `log_probabilities`. The
    reference applies transformers' repetition penalty, then the OpenAI frequency and presence
    penalties and the temperature by hand."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 12)).astype("float32") * 2
    history = rng.integers(0, 12, size=(4, 5))
    counts = np.stack([np.bincount(h, minlength=12) for h in history]).astype("float32")
    sampler = samplers.BeamSampler(num_beams=4, temperature=0.7, repetition_penalty=1.8,
                                   frequency_penalty=0.3, presence_penalty=0.5)

    penalised = RepetitionPenaltyLogitsProcessor(1.8)(
        torch.from_numpy(history), torch.from_numpy(logits)).numpy()
    penalised = (penalised - 0.3 * counts - 0.5 * (counts > 0)) / 0.7
    reference = torch.log_softmax(torch.from_numpy(penalised), dim=-1).numpy()

    np.testing.assert_allclose(
        np.asarray(sampler.log_probabilities(logits, counts)), reference, atol=1e-5)
    expected = np.argsort(-reference, axis=-1, kind="stable")[:, :4]
    unpenalised = np.argsort(-logits, axis=-1, kind="stable")[:, :4]
    assert (expected != unpenalised).any(), "the penalties must change the ranking"
    np.testing.assert_array_equal(np.asarray(sampler(logits, token_counts=counts)), expected)


def test_layer_call_with_a_penalty_and_no_counts_says_so():
    with pytest.raises(ValueError, match="repetition_penalty.*token_counts"):
        samplers.BeamSampler(num_beams=2, repetition_penalty=1.5)(np.zeros((1, 4), "float32"))


def test_layer_call_is_best_first():
    logits = np.random.default_rng(2).permutation(40).reshape(2, 20).astype("float32")
    ids = np.asarray(samplers.BeamSampler(num_beams=6)(logits))
    np.testing.assert_array_equal(ids, np.argsort(-logits, axis=-1)[:, :6])


# ---- keras_hub's protocol: sampler(next, prompt, cache=, index=, mask=, stop_token_ids=) ---

def both(num_beams=3, return_all_beams=False):
    return (samplers.BeamSampler(num_beams=num_beams, return_all_beams=return_all_beams),
            keras_hub.samplers.BeamSampler(num_beams=num_beams,
                                           return_all_beams=return_all_beams))


def test_default_index_is_zero_as_in_keras_hub():
    ours, theirs = both()
    out = np.asarray(ours(markov_next(), prompt()))
    np.testing.assert_array_equal(out, np.asarray(theirs(markov_next(), prompt())))
    assert (out != 0).all(), "every position, the first included, is generated"


def test_all_beams_and_scores_match_keras_hub():
    ours, theirs = both(num_beams=4, return_all_beams=True)
    ids, scores = ours(markov_next(), prompt(), index=1)
    ref_ids, ref_scores = theirs(markov_next(), prompt(), index=1)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(ref_ids))
    np.testing.assert_allclose(np.asarray(scores), np.asarray(ref_scores), rtol=1e-5)
    assert (np.asarray(ids)[:, :, 0] == 0).all(), "positions before `index` are kept"


def test_mask_keeps_prompt_tokens_as_in_keras_hub():
    start = prompt()
    start[0, :2], start[1, :3] = [5, 6], [7, 1, 2]
    mask = start != 0
    ours, theirs = both()
    out = np.asarray(ours(markov_next(), start, index=2, mask=mask))
    np.testing.assert_array_equal(
        out, np.asarray(theirs(markov_next(), start, index=2, mask=mask)))
    np.testing.assert_array_equal(out[mask], start[mask])


def test_stop_token_ids_end_the_search_as_in_keras_hub():
    ours, theirs = both()
    out = np.asarray(ours(markov_next(STOP_AT), prompt(), stop_token_ids=(STOP,)))
    np.testing.assert_array_equal(
        out, np.asarray(theirs(markov_next(STOP_AT), prompt(), stop_token_ids=(STOP,))))
    assert (out[:, STOP_AT] == STOP).all()
    assert (out[:, STOP_AT + 1:] == 0).all(), "nothing is generated after every beam stopped"
    free = np.asarray(ours(markov_next(STOP_AT), prompt()))
    assert (free[:, STOP_AT + 1:] != 0).all(), "without stop tokens the search goes on"
