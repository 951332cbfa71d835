"""Sampler layers and pure functions: correctness, composition, seeding, serialization, errors."""

import json

import keras
import numpy as np
import pytest

from kzoo import samplers
from kzoo.samplers import functional as F

ALL_CLASSES = [
    samplers.Sampler, samplers.GreedySampler, samplers.RandomSampler, samplers.TopKSampler,
    samplers.TopPSampler, samplers.MinPSampler, samplers.BeamSampler,
]


def random_logits(rows=512, vocab=40, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, vocab)).astype("float32") * 2


def test_greedy_is_argmax():
    logits = random_logits()
    np.testing.assert_array_equal(samplers.GreedySampler()(logits), logits.argmax(-1))


def test_temperature_near_zero_equals_greedy():
    logits = random_logits()
    ids = samplers.RandomSampler(temperature=1e-4, seed=1)(logits)
    np.testing.assert_array_equal(ids, logits.argmax(-1))
    np.testing.assert_array_equal(samplers.Sampler(temperature=0.0)(logits), logits.argmax(-1))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_never_leaves_the_top_k(k):
    logits = random_logits(rows=256)
    top = np.argsort(-logits, axis=-1)[:, :k]
    sampler = samplers.TopKSampler(k=k, seed=7)
    for _ in range(20):  # 5,120 draws
        ids = np.asarray(sampler(logits))
        assert all(i in row for i, row in zip(ids, top))


def test_top_k_spreads_over_the_top_k():
    logits = np.tile(np.log([[0.4, 0.3, 0.2, 0.1]]).astype("float32"), (4000, 1))
    ids = np.asarray(samplers.TopKSampler(k=2, seed=3)(logits))
    freq = np.bincount(ids, minlength=4) / len(ids)
    np.testing.assert_allclose(freq, [0.4 / 0.7, 0.3 / 0.7, 0, 0], atol=0.03)


def test_random_sampler_matches_softmax_frequencies():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.tile(np.log(probs).astype("float32"), (20000, 1))
    ids = np.asarray(samplers.RandomSampler(seed=11)(logits))
    np.testing.assert_allclose(np.bincount(ids, minlength=4) / len(ids), probs, atol=0.015)


def test_top_p_keeps_the_nucleus_only():
    probs = np.array([0.5, 0.3, 0.15, 0.05])  # p=0.7 -> {0, 1}: 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    logits = np.tile(np.log(probs).astype("float32"), (5000, 1))
    ids = np.asarray(samplers.TopPSampler(p=0.7, seed=2)(logits))
    assert set(ids.tolist()) == {0, 1}
    np.testing.assert_allclose(np.mean(ids == 0), 0.5 / 0.8, atol=0.03)
    # p = 1 keeps everything; a tiny p keeps only the argmax.
    assert set(np.asarray(samplers.TopPSampler(p=1.0, seed=2)(logits)).tolist()) == {0, 1, 2, 3}
    assert set(np.asarray(samplers.TopPSampler(p=1e-6, seed=2)(logits)).tolist()) == {0}


def test_min_p_drops_unlikely_tokens():
    logits = np.log([[0.6, 0.3, 0.1]]).astype("float32")
    kept = np.asarray(F.min_p_filter(logits, 0.25))
    assert kept[0, 2] == F.NEG_INF and np.all(kept[0, :2] > F.NEG_INF)
    ids = np.asarray(samplers.MinPSampler(p=0.25, seed=0)(np.tile(logits, (3000, 1))))
    assert set(ids.tolist()) == {0, 1}


def test_filters_compose_in_order():
    logits = random_logits(rows=8, vocab=30)
    sampler = samplers.TopPSampler(p=0.6, top_k=5, min_p=0.1, temperature=0.7)
    expected = F.min_p_filter(F.top_p_filter(F.top_k_filter(logits / 0.7, 5), 0.6), 0.1)
    np.testing.assert_allclose(sampler.process_logits(logits), expected, rtol=1e-6)
    ids = np.asarray(samplers.TopPSampler(p=0.6, top_k=5, temperature=0.7, seed=0)(logits))
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    assert all(i in row for i, row in zip(ids, top5))


def test_penalty_functions():
    logits = np.array([[2.0, -1.0, 1.0]], "float32")
    counts = np.array([[2.0, 1.0, 0.0]], "float32")
    np.testing.assert_allclose(F.repetition_penalty(logits, counts, 2.0), [[1.0, -2.0, 1.0]])
    np.testing.assert_allclose(F.frequency_penalty(logits, counts, 0.5), [[1.0, -1.5, 1.0]])
    np.testing.assert_allclose(F.presence_penalty(logits, counts, 0.5), [[1.5, -1.5, 1.0]])
    np.testing.assert_allclose(F.token_counts([[1, 1, 2]], 4), [[0, 2, 1, 0]])
    np.testing.assert_allclose(F.token_counts([[1, 1, 2]], 4, [[1, 0, 1]]), [[0, 1, 1, 0]])


def test_penalties_in_a_sampler_change_the_choice():
    logits = np.array([[3.0, 2.9, 0.0]], "float32")
    counts = np.array([[1.0, 0.0, 0.0]], "float32")
    assert int(samplers.GreedySampler()(logits)[0]) == 0
    assert int(samplers.GreedySampler(presence_penalty=1.0)(logits, token_counts=counts)[0]) == 1
    assert int(samplers.GreedySampler(repetition_penalty=1.5)(logits, token_counts=counts)[0]) == 1
    with pytest.raises(ValueError, match="token_counts"):
        samplers.GreedySampler(frequency_penalty=1.0)(logits)


def test_same_seed_same_draws_other_seed_other_draws():
    logits = random_logits(rows=64)
    a = np.asarray(samplers.TopKSampler(k=10, seed=5)(logits))
    b = np.asarray(samplers.TopKSampler(k=10, seed=5)(logits))
    c = np.asarray(samplers.TopKSampler(k=10, seed=6)(logits))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_beam_layer_returns_the_best_tokens_best_first():
    logits = random_logits(rows=4, vocab=20)
    ids = np.asarray(samplers.BeamSampler(num_beams=3)(logits))
    np.testing.assert_array_equal(ids, np.argsort(-logits, axis=-1)[:, :3])


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_json_round_trip(cls):
    sampler = cls(seed=3, temperature=0.5, repetition_penalty=1.2)
    config = json.loads(json.dumps(samplers.serialize(sampler)))
    restored = samplers.deserialize(config)
    assert type(restored) is cls
    assert restored.get_config() == sampler.get_config()
    assert cls.from_config(sampler.get_config()).get_config() == sampler.get_config()


def test_sampler_inside_a_saved_functional_model(tmp_path):
    inputs = keras.Input((30,))
    outputs = samplers.TopKSampler(k=1, seed=0)(keras.layers.Dense(30)(inputs))
    model = keras.Model(inputs, outputs)
    x = random_logits(rows=6, vocab=30)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(restored.layers[-1], samplers.TopKSampler)
    np.testing.assert_array_equal(model(x), restored(x))
    assert keras.backend.standardize_dtype(restored(x).dtype) == "int32"


def test_get_by_name_config_and_instance():
    sampler = samplers.get("top_p", p=0.8, top_k=20, temperature=0.9)
    assert isinstance(sampler, samplers.TopPSampler)
    assert (sampler.p, sampler.top_k, sampler.temperature) == (0.8, 20, 0.9)
    assert samplers.get(sampler) is sampler
    assert isinstance(samplers.get(samplers.serialize(sampler)), samplers.TopPSampler)
    assert "top_k" in samplers.list_samplers() and "beam" in samplers.list_samplers()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: samplers.get("nucleus"), "Valid names: beam, contrastive, greedy, min_p"),
        (lambda: samplers.TopKSampler(k=0), "k > 0"),
        (lambda: samplers.TopKSampler(k=-3), "k > 0"),
        (lambda: samplers.TopKSampler(k=2.5), "k > 0"),
        (lambda: samplers.TopPSampler(p=0.0), r"\(0, 1\]"),
        (lambda: samplers.TopPSampler(p=1.5), r"\(0, 1\]"),
        (lambda: samplers.RandomSampler(temperature=-0.1), "temperature"),
        (lambda: samplers.MinPSampler(p=2.0), "min_p"),
        (lambda: samplers.Sampler(repetition_penalty=0.0), "repetition_penalty"),
        (lambda: samplers.BeamSampler(num_beams=0), "num_beams"),
        (lambda: samplers.RandomSampler(seed="x"), "seed"),
        (lambda: samplers.get(42), "Could not interpret"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()
