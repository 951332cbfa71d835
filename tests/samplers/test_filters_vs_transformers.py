"""top-p and min-p filters: the "keep everything" settings, float32 rounding, and Hugging Face
transformers' `TopPLogitsWarper` / `MinPLogitsWarper` as the outside reference."""

import numpy as np
import pytest
import torch
from transformers import MinPLogitsWarper, TopPLogitsWarper

from kzoo.samplers import functional as F

VOCAB = 64


def peaked_rows(rows=2000, vocab=VOCAB, scale=5.0, seed=0):
    """Random rows whose tails hold so little mass that a float32 cumsum from the top cannot see
    it: the rows on which rounding used to decide what a filter kept."""
    return (np.random.default_rng(seed).normal(size=(rows, vocab)) * scale).astype("float32")


def rows_with_ties(rows=500, vocab=VOCAB, seed=1):
    """Logits rounded to halves, so many rows have tokens of exactly equal logit."""
    return np.round(peaked_rows(rows, vocab, 3.0, seed) * 2) / 2


def kept(filtered) -> np.ndarray:
    return np.asarray(filtered) > F.NEG_INF / 2


def hf_kept(warper, logits) -> np.ndarray:
    out = warper(None, torch.from_numpy(logits))
    return torch.isfinite(out).numpy()


def test_top_p_one_keeps_every_token():
    logits = peaked_rows()
    logits[:10, 0] = 200.0  # the rest of these rows underflows to probability 0 in float32
    dropping = np.flatnonzero(~kept(F.top_p_filter(logits, 1.0)).all(-1))
    assert dropping.size == 0, f"{dropping.size} of {len(logits)} rows lost tokens"


def test_min_p_zero_keeps_every_token():
    logits = peaked_rows(rows=200)
    logits[:, 0] = 100.0  # every other token is more than 69 nats (log 1e-30) below the top
    dropping = np.flatnonzero(~kept(F.min_p_filter(logits, 0.0)).all(-1))
    assert dropping.size == 0, f"{dropping.size} of {len(logits)} rows lost tokens"


@pytest.mark.parametrize("p", [0.3, 0.9, 0.99, 0.999999])
def test_top_p_keeps_the_same_tokens_as_transformers(p):
    logits = peaked_rows()
    np.testing.assert_array_equal(kept(F.top_p_filter(logits, p)),
                                  hf_kept(TopPLogitsWarper(p), logits))


@pytest.mark.parametrize("p", [0.3, 0.9, 0.99])
def test_top_p_matches_transformers_up_to_documented_ties(p):
    """kzoo keeps every token tied with the cutoff (the smallest kept logit); transformers cuts
    by sorted position, so it may keep only some of them. That is the only allowed difference."""
    logits = rows_with_ties()
    ours, theirs = kept(F.top_p_filter(logits, p)), hf_kept(TopPLogitsWarper(p), logits)
    assert (ours >= theirs).all(), "kzoo dropped a token transformers keeps"
    cutoff = np.where(theirs, logits, np.inf).min(-1, keepdims=True)
    extra = ours & ~theirs
    assert (logits[extra] == np.broadcast_to(cutoff, logits.shape)[extra]).all()
    assert extra.any(), "the rows should exercise the tie rule"


@pytest.mark.parametrize("min_p", [0.01, 0.05, 0.2, 0.5])
def test_min_p_keeps_the_same_tokens_as_transformers(min_p):
    logits = peaked_rows(scale=2.0)
    np.testing.assert_array_equal(kept(F.min_p_filter(logits, min_p)),
                                  hf_kept(MinPLogitsWarper(min_p), logits))
