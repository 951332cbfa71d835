"""Speculative sampling keeps the target's distribution: the accept/reject rule (accept a draft
with min(1, p/q), else draw from max(0, p - q) normalised), checked by a chi-square test of
the joint law of the first three new tokens over a 5-token vocabulary against the target's
own, computed exactly from its logits. The same test rejects the draft model's law, so it can
fail."""

import itertools

import keras
import numpy as np
import pytest
from scipy import stats

from kzoo.generation import Generator
from kzoo.models import CausalLM
from kzoo.samplers import Sampler
from tests.generation.reference import causal_logits

VOCAB, NEW, PROMPT = 5, 3, [1, 2, 1]
ROWS, CALLS = 1000, 3  # 3000 samples, each row one independent draw
TEMPERATURE, TOP_K = 0.9, 4


def _model(seed, scale):
    keras.utils.set_random_seed(seed)
    model = CausalLM.from_preset("llama_nano", vocab_size=VOCAB, max_sequence_length=16)
    for v in model.weights:
        if "embedding" in v.path or "kernel" in v.path:
            v.assign(np.asarray(v.numpy()) * scale)
    return model


def _processed(logits):
    """The sampler's distribution (temperature, then top-k), float64."""
    z = logits / TEMPERATURE
    z = np.where(z >= np.sort(z)[-TOP_K], z, -np.inf)
    p = np.exp(z - z.max())
    return p / p.sum()


def _joint(model):
    """Exact probability of each of the VOCAB ** NEW continuations."""
    joint = {}
    for seq in itertools.product(range(VOCAB), repeat=NEW):
        prob, prefix = 1.0, list(PROMPT)
        for token in seq:
            prob *= _processed(causal_logits(model, prefix)[-1])[token]
            prefix.append(token)
        joint[seq] = prob
    return joint


def _chi_square_p(counts, joint):
    """p-value of the observed counts under `joint`, cells with expected < 5 pooled; a count in
    a cell of probability 0 (a token top-k removed) gives 0."""
    total = sum(counts.values())
    if any(counts.get(cell, 0) > 0 for cell, prob in joint.items() if prob == 0):
        return 0.0
    expected = {cell: total * prob for cell, prob in joint.items() if prob > 0}
    big = [cell for cell, e in expected.items() if e >= 5]
    small = [cell for cell in expected if cell not in big]
    observed = [counts.get(c, 0) for c in big]
    wanted = [expected[c] for c in big]
    if small:
        observed.append(sum(counts.get(c, 0) for c in small))
        wanted.append(sum(expected[c] for c in small))
    return stats.chisquare(observed, wanted).pvalue


@pytest.fixture(scope="module")
def models():
    target, draft = _model(0, 2.0), _model(7, 2.0)
    memo = {}

    def joint(model):  # only the cells are needed; cache the exact laws per model
        if id(model) not in memo:
            memo[id(model)] = _joint(model)
        return memo[id(model)]

    return target, draft, joint


def _sample(target, draft, k):
    sampler = Sampler(temperature=TEMPERATURE, top_k=TOP_K)
    # One XLA program on JAX (eager JAX dispatches each op); TF graphs and eager torch trace
    # faster than XLA compiles.
    jit = keras.backend.backend() == "jax"
    generator = Generator(target, sampler, draft=draft, num_draft_tokens=k, jit_compile=jit)
    counts, accepted, drafted = {}, 0, 0
    for seed in range(CALLS):
        result = generator.generate([PROMPT] * ROWS, max_new_tokens=NEW, seed=seed)
        for row in result.token_ids:
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
        accepted += sum(result.stats["accepted"])
        drafted += sum(result.stats["drafted"])
    return counts, accepted / drafted


@pytest.mark.parametrize("kind", ["draft_model", "prompt_lookup"])
def test_speculative_sampling_matches_the_targets_distribution(kind, models):
    target, draft_model, joint = models
    draft = draft_model if kind == "draft_model" else "prompt_lookup"
    counts, rate = _sample(target, draft, k=2)
    assert 0.05 < rate < 0.95  # both branches of the rule ran
    assert _chi_square_p(counts, joint(target)) > 1e-3
    if kind == "draft_model":
        # Power: the draft's own law, at the same sample size, is rejected by the same test.
        draft_law = joint(draft_model)
        n = sum(counts.values())
        fake = {cell: n * prob for cell, prob in draft_law.items()}
        assert _chi_square_p(fake, joint(target)) < 1e-6
