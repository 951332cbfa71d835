"""Samplers in the corners the mutation tester found unguarded: symbolic output specs, the call
forms of the keras_hub protocol, the decode loop's stop rule, argument aliases and defaults
(against keras_hub's), and the filters and penalties against Hugging Face transformers."""

import keras
import keras_hub
import numpy as np
import pytest

from kzoo import samplers
from kzoo.samplers import functional as F


def random_logits(rows=64, vocab=30, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, vocab)).astype("float32") * 2


def test_symbolic_output_specs():
    logits = keras.Input((30,))
    beams = samplers.BeamSampler(num_beams=3)(logits)
    assert tuple(beams.shape) == (None, 3) and beams.dtype == "int32"
    ids = samplers.TopKSampler(k=4)(logits)
    assert tuple(ids.shape) == (None,) and ids.dtype == "int32"
    model = keras.Model(logits, [beams, ids])
    out_beams, out_ids = model(random_logits(5))
    assert tuple(out_beams.shape) == (5, 3) and tuple(out_ids.shape) == (5,)


def test_defaults_match_keras_hub():
    assert samplers.BeamSampler().num_beams == keras_hub.samplers.BeamSampler().num_beams
    assert samplers.TopKSampler().k == keras_hub.samplers.TopKSampler().k
    assert samplers.BeamSampler().return_all_beams is False
    assert samplers.Sampler().temperature == 1.0 and samplers.Sampler().top_k is None


def test_headline_argument_aliases():
    assert samplers.TopKSampler(top_k=3).k == 3
    assert samplers.TopKSampler(k=3, top_k=3).k == 3  # the same value twice is fine
    with pytest.raises(ValueError, match="two values"):
        samplers.TopKSampler(k=3, top_k=5)
    assert samplers.TopPSampler(top_p=0.5).p == 0.5
    assert samplers.MinPSampler(min_p=0.2).p == 0.2
    config = samplers.TopKSampler(k=7).get_config()
    assert config["k"] == 7 and "top_k" not in config


def test_is_sampler_needs_both_protocol_methods():
    class OnlyNext:
        def get_next_token(self, probabilities):
            return probabilities

    class OnlyProbs:
        def compute_probabilities(self, logits):
            return logits

    assert not samplers.is_sampler(OnlyNext()) and not samplers.is_sampler(OnlyProbs())
    assert samplers.is_sampler(samplers.GreedySampler())
    assert samplers.is_sampler(keras_hub.samplers.GreedySampler())
    with pytest.raises(ValueError, match="Could not interpret"):
        samplers.get(OnlyNext())
    with pytest.raises(ValueError, match="only accepted with a sampler name"):
        samplers.get(samplers.GreedySampler(), k=3)


def test_list_logits_with_positional_token_counts():
    logits = [[3.0, 2.9, 0.0]]
    counts = np.array([[1.0, 0.0, 0.0]], "float32")
    sampler = samplers.GreedySampler(presence_penalty=1.0)
    assert int(sampler(logits, counts)[0]) == 1
    assert int(sampler(logits, token_counts=counts)[0]) == 1
    assert int(samplers.GreedySampler()(logits)[0]) == 0


def _fake_next(preferred):
    """keras_hub's `next(prompt, cache, index)` callback: row r always prefers `preferred[r]`."""
    table = np.full((len(preferred), 8), -5.0, "float32")
    table[np.arange(len(preferred)), preferred] = 5.0

    def next_fn(prompt, cache, index):
        return keras.ops.convert_to_tensor(table), None, cache

    return next_fn


@pytest.mark.parametrize("positional", [False, True])
def test_decode_loop_call_forms_and_default_index(positional):
    prompt = np.zeros((2, 5), "int32")
    sampler = samplers.GreedySampler()
    next_fn = _fake_next([4, 6])
    out = sampler(next_fn, prompt) if positional else sampler(next=next_fn, prompt=prompt)
    np.testing.assert_array_equal(np.asarray(out), [[4] * 5, [6] * 5])  # filled from slot 0


def test_decode_loop_keeps_prompt_tokens_and_stops_per_row():
    """Row 0 hits the stop token at once; row 1 never does and must run to the end."""
    prompt = np.array([[1, 0, 0, 0, 0, 0], [2, 2, 0, 0, 0, 0]], "int32")
    mask = prompt > 0
    out = np.asarray(samplers.GreedySampler()(next=_fake_next([3, 5]), prompt=prompt, index=1,
                                              mask=mask, stop_token_ids=[3]))
    np.testing.assert_array_equal(out[1], [2, 2, 5, 5, 5, 5])
    assert out[0, 0] == 1 and out[0, 1] == 3
    # Once every row has produced a stop token, the loop ends.
    done = np.asarray(samplers.GreedySampler()(next=_fake_next([3, 3]), prompt=prompt, index=1,
                                               mask=mask, stop_token_ids=[3]))
    np.testing.assert_array_equal(done[:, 3:], 0)


def test_decode_loop_counts_only_filled_positions():
    """A repetition penalty in keras_hub's loop counts the tokens before `index` only."""
    prompt = np.array([[4, 0, 0, 0]], "int32")  # slot 1-3 zeros are not tokens yet

    def next_fn(prompt, cache, index):
        logits = np.full((1, 8), 0.0, "float32")
        logits[0, 0], logits[0, 4], logits[0, 1] = 3.0, 2.9, 2.8
        return keras.ops.convert_to_tensor(logits), None, cache

    sampler = samplers.GreedySampler(presence_penalty=1.0)
    out = np.asarray(sampler(next=next_fn, prompt=prompt, index=1))
    # Slot 1: token 0 (3.0) beats the seen 4 (2.9 - 1); had the empty slots counted as token 0
    # it would have been 1 (2.8). Slot 2: 1 (2.8) beats 0 (3.0 - 1). Slot 3: 0 (2.0) beats 1 (1.8).
    np.testing.assert_array_equal(out[0], [4, 0, 1, 0])


def test_compute_probabilities_and_get_next_token():
    logits = random_logits(8, 10)
    sampler = samplers.TopKSampler(k=2, temperature=0.5, seed=1)
    probs = np.asarray(sampler.compute_probabilities(logits))
    z = logits / 0.5
    z = np.where(z >= np.sort(z, -1)[:, -2:-1], z, -np.inf)
    expected = np.exp(z - z.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), atol=1e-6)
    one_hot = np.eye(10, dtype="float32")[[3, 7]]
    np.testing.assert_array_equal(np.asarray(samplers.RandomSampler(seed=0).get_next_token(
        one_hot)), [3, 7])


def test_greedy_flags():
    assert samplers.GreedySampler().is_greedy and samplers.Sampler(temperature=0).is_greedy
    assert not samplers.Sampler().is_greedy and not samplers.TopKSampler().is_greedy
    assert samplers.BeamSampler().is_greedy
    assert not samplers.Sampler().uses_token_counts
    for penalty in ({"repetition_penalty": 1.2}, {"frequency_penalty": 0.1},
                    {"presence_penalty": -0.1}):
        assert samplers.Sampler(**penalty).uses_token_counts


def test_beam_log_probabilities_are_processed_log_softmax():
    logits = random_logits(4, 12)
    counts = np.zeros((4, 12), "float32")
    counts[:, 0] = 2
    beam = samplers.BeamSampler(num_beams=2, temperature=2.0, frequency_penalty=0.5)
    z = (logits - 0.5 * counts) / 2.0
    expected = z - z.max(-1, keepdims=True)
    expected -= np.log(np.exp(expected).sum(-1, keepdims=True))
    np.testing.assert_allclose(beam.log_probabilities(logits, counts), expected, atol=1e-5)


def test_filters_keep_ties_and_the_boundary_token():
    logits = np.log(np.array([[0.4, 0.3, 0.2, 0.1]], "float32"))
    kept = lambda out: (np.asarray(out) > F.NEG_INF / 2)[0].tolist()  # noqa: E731
    assert kept(F.top_p_filter(logits, 0.7)) == [True, True, False, False]  # 0.4 < 0.7
    assert kept(F.top_p_filter(logits, 0.4)) == [True, False, False, False]  # mass before = 0.4
    assert kept(F.min_p_filter(logits, 0.5)) == [True, True, True, False]  # 0.2 = 0.5 * 0.4
    tied = np.array([[1.0, 2.0, 2.0, 0.5]], "float32")
    assert kept(F.top_k_filter(tied, 2)) == [False, True, True, False]
    assert kept(F.top_k_filter(tied, 1)) == [False, True, True, False]  # ties with k-th kept
    assert kept(F.top_k_filter(tied, 10)) == [True] * 4  # k clipped to the vocabulary


@pytest.mark.parametrize("value, check, ok", [
    (0.0, F.check_temperature, True), (1.0, F.check_top_p, True), (0.0, F.check_min_p, True),
    (1.0, F.check_min_p, True), (1e-9, F.check_repetition_penalty, True),
    (0.0, F.check_repetition_penalty, False), (1.0001, F.check_top_p, False),
    (-1e-9, F.check_min_p, False), (True, F.check_temperature, False),
    (1, F.check_top_k, True), (0, F.check_top_k, False), (2.0, F.check_top_k, False),
])
def test_argument_boundaries(value, check, ok):
    if ok:
        assert check(value) == value
    else:
        with pytest.raises(ValueError):
            check(value)


def test_penalties_on_negative_and_zero_logits():
    logits = np.array([[2.0, -1.0, 0.0, 1.0]], "float32")
    counts = np.array([[1.0, 2.0, 1.0, 0.0]], "float32")
    np.testing.assert_allclose(F.repetition_penalty(logits, counts, 2.0), [[1.0, -2.0, 0.0, 1.0]])
    np.testing.assert_allclose(F.presence_penalty(logits, counts, 0.5), [[1.5, -1.5, -0.5, 1.0]])


# ---- Hugging Face transformers' logits processors as the outside reference (torch imported
# here, not at the top, so that the tests above run without it).


def _hf(processor, logits, input_ids=None):
    torch = pytest.importorskip("torch")
    ids = torch.zeros((len(logits), 1), dtype=torch.long) if input_ids is None else input_ids
    return processor(ids, torch.from_numpy(np.array(logits))).numpy()


@pytest.mark.parametrize("k", [1, 5, 29])
def test_top_k_and_temperature_match_transformers(k):
    transformers = pytest.importorskip("transformers")
    logits = random_logits()
    theirs = _hf(transformers.TopKLogitsWarper(k), _hf(transformers.TemperatureLogitsWarper(0.7),
                                                       logits))
    ours = np.asarray(samplers.TopKSampler(k=k, temperature=0.7).process_logits(logits))
    finite = np.isfinite(theirs)
    np.testing.assert_array_equal(ours > F.NEG_INF / 2, finite)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6)


def test_repetition_penalty_matches_transformers():
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    logits = random_logits(rows=4, vocab=12)
    history = np.array([[0, 1, 1, 5], [2, 2, 2, 2], [11, 3, 7, 0], [4, 6, 8, 10]])
    counts = np.asarray(F.token_counts(history, 12))
    theirs = _hf(transformers.RepetitionPenaltyLogitsProcessor(1.7), logits,
                 torch.from_numpy(history))
    np.testing.assert_allclose(F.repetition_penalty(logits, counts, 1.7), theirs, rtol=1e-6)
    sampler = samplers.GreedySampler(repetition_penalty=1.7)
    np.testing.assert_array_equal(sampler(logits, token_counts=counts), theirs.argmax(-1))


def test_deserialize_refuses_code_in_a_config():
    # A sampler config from a file must never run code: a serialized lambda is refused.
    config = keras.saving.serialize_keras_object(lambda x: x)
    assert config["class_name"] == "__lambda__"
    with pytest.raises(ValueError, match="lambda"):
        samplers.deserialize(config)
    with pytest.raises(ValueError, match="lambda"):
        samplers.get(config)


def test_get_messages_in_full():
    with pytest.raises(ValueError) as info:
        samplers.get(samplers.GreedySampler(), k=3)
    assert str(info.value) == "Keyword arguments are only accepted with a sampler name."
    with pytest.raises(ValueError) as info:
        samplers.get(3.5)
    assert str(info.value) == (f"Could not interpret sampler 3.5: pass one of "
                               f"{samplers.list_samplers()}, a config dict, or a sampler "
                               "instance.")


def test_headline_defaults_and_configs_of_the_named_samplers():
    assert samplers.TopPSampler().p == 0.9 and samplers.MinPSampler().p == 0.05
    assert samplers.TopKSampler().k == 5
    for sampler, key, generic in ((samplers.TopPSampler(p=0.3), "p", "top_p"),
                                  (samplers.MinPSampler(p=0.2), "p", "min_p"),
                                  (samplers.TopKSampler(k=4), "k", "top_k")):
        config = sampler.get_config()
        assert generic not in config
        again = type(sampler).from_config(config)
        assert getattr(again, key) == getattr(sampler, key)
        assert again.get_config() == config
    with pytest.raises(ValueError) as info:
        samplers.TopPSampler(p=0.5, top_p=0.6)
    assert str(info.value) == "Got two values for one argument: 0.5 and top_p=0.6."
    assert samplers.MinPSampler(p=0.1, min_p=0.1).p == 0.1


def test_beam_sampler_arguments_and_config():
    beam = samplers.BeamSampler(num_beams=4, return_all_beams=1, temperature=0.5)
    assert beam.return_all_beams is True
    config = beam.get_config()
    assert (config["num_beams"], config["return_all_beams"]) == (4, True)
    again = samplers.BeamSampler.from_config(config)
    assert (again.num_beams, again.return_all_beams, again.temperature) == (4, True, 0.5)
    for bad in (True, 2.0, -1, "3"):
        with pytest.raises(ValueError) as info:
            samplers.BeamSampler(num_beams=bad)
        assert str(info.value) == f"`num_beams` must be a positive integer. Received: {bad!r}"
    # the n best next tokens, best first, int32
    ids = samplers.BeamSampler(num_beams=3)(np.array([[0.1, 3.0, -1.0, 2.0, 2.5]], "float32"))
    assert keras.backend.standardize_dtype(ids.dtype) == "int32"
    assert np.asarray(ids).tolist() == [[1, 4, 3]]
