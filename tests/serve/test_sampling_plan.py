"""The server sampler's edges that the mutation tester found unguarded (kzoo/serve/sampling.py):
`plan` at top_k = 1 and top_k = HEAD_K, a row drawing the same token in the variant `plan`
picks for it alone as with everything computed, and top-p's nucleus when the head's mass is
exactly p (the head is the whole nucleus: `top_p_filter` and transformers' `TopPLogitsWarper`
drop a token whose tail mass is <= 1 - p)."""

import numpy as np
import pytest
from keras import ops

from kzoo.serve.sampling import HEAD_K, pick, plan


def row(t=1.0, k=0, p=1.0):
    return {"temperature": t, "top_k": k, "top_p": p}


@pytest.mark.parametrize("settings, expected", [
    (row(p=0.9, k=1), (False, True, 0)),  # top-k 1 is "a top-k of at most HEAD_K"
    (row(p=0.9, k=HEAD_K), (False, True, 0)),  # so is HEAD_K itself
    (row(p=0.9, k=HEAD_K + 1), (True, False, 0)),
    (row(p=0.9, k=100), (False, True, 0)),  # a top-p row's top-k needs no width
    (row(k=1), (False, False, 16)),  # top-k 1 without top-p needs the candidates
    (row(k=0), (False, False, 0)),
])
def test_plan_at_the_top_k_edges(settings, expected):
    assert plan([settings, None], 50257) == expected


@pytest.mark.parametrize("top_k, top_p", [(1, 0.9), (HEAD_K, 0.6), (1, 1.0), (2, 1.0)])
def test_a_row_planned_alone_draws_what_everything_computed_draws(top_k, top_p):
    rng = np.random.default_rng(top_k)
    rows, vocab = 16, 2 * HEAD_K + 88
    logits = (rng.normal(size=(rows, vocab)) * 3).astype("float32")
    settings = {"temperature": np.full(rows, 1.0, "float32"),
                "top_k": np.full(rows, top_k, "int32"),
                "top_p": np.full(rows, top_p, "float32"), "min_p": np.zeros(rows, "float32"),
                "u": rng.uniform(size=rows).astype("float32")}
    planned = plan([row(k=top_k, p=top_p)], vocab)
    token = ops.convert_to_numpy(pick(logits, settings, 1, *planned)[0])
    full = ops.convert_to_numpy(pick(logits, settings, 1, True, True, vocab)[0])
    np.testing.assert_array_equal(token, full)
    if top_k == 1:
        np.testing.assert_array_equal(token, np.argmax(logits, axis=-1))
    else:  # real draws inside the top k
        assert len(set(token.tolist())) > 1
        rank = (logits > logits[np.arange(rows), token][:, None]).sum(-1)
        assert (rank < top_k).all()


@pytest.mark.parametrize("top_k", [0, 10])  # the whole sorted vocabulary; the head
def test_a_head_with_mass_exactly_p_is_the_whole_nucleus(top_k):
    probs = np.array([0.22, 0.18, 0.15, 0.12, 0.1, 0.08, 0.06, 0.05, 0.03, 0.01])
    ids = np.array([4, 9, 0, 7, 2, 5, 8, 1, 3, 6])  # token ids[r] has rank r
    logits = np.zeros((1, 10), "float32")
    logits[0, ids] = np.log(probs)
    # The tail mass from rank 2 on, computed as the sampler does (softmax of the sorted
    # logits, summed from the smallest up): in [0.5, 1], so 1 - tail and 1 - (1 - tail) are
    # exact in float32, and p = 1 - tail makes the top two's mass exactly p.
    ordered = ops.top_k(ops.convert_to_tensor(logits), k=10, sorted=True)[0]
    tail = ops.convert_to_numpy(ops.flip(ops.cumsum(ops.flip(
        ops.softmax(ordered, axis=-1), axis=-1), axis=-1), axis=-1))[0, 2]
    assert 0.5 <= tail <= 1.0
    p = np.float32(1.0) - tail

    def draw(top_p):
        settings = {"temperature": np.ones(1, "float32"), "top_k": np.full(1, top_k, "int32"),
                    "top_p": np.full(1, top_p, "float32"), "min_p": np.zeros(1, "float32"),
                    "u": np.full(1, 0.999, "float32")}  # the last kept token
        return int(ops.convert_to_numpy(pick(logits, settings, 1, *plan(
            [row(k=top_k, p=float(top_p))], 10))[0])[0])

    assert draw(p) == ids[1], "mass exactly p: the third token is outside the nucleus"
    # a little more than p (1 - p one float below the tail, exactly) needs the third token
    assert draw(np.float32(1.0) - np.nextafter(tail, np.float32(0))) == ids[2]


def _one_row(top_k, top_p, min_p, u):
    return {"temperature": np.ones(1, "float32"), "top_k": np.full(1, top_k, "int32"),
            "top_p": np.full(1, top_p, "float32"), "min_p": np.full(1, min_p, "float32"),
            "u": np.full(1, u, "float32")}


@pytest.mark.parametrize("top_k", [0, 3])  # the whole sorted vocabulary; the head
def test_min_p_keeps_a_token_exactly_at_the_threshold_with_top_p(top_k):
    # The sorted path's own min-p: p_i >= min_p * p_max keeps it, as `min_p_filter` does. The
    # threshold logit is computed as the sampler computes it: max + log(min_p) (max = 0).
    at = float(ops.convert_to_numpy(ops.log(ops.convert_to_tensor(np.float32(0.25)))))
    logits = np.array([[0.0, at, -6.0, -0.5]], "float32")
    settings = _one_row(top_k, 0.999, 0.25, 0.999)  # u: the last kept token (by rank)
    token = pick(logits, settings, 1, *plan([row(k=top_k, p=0.999)], 4))[0]
    assert int(ops.convert_to_numpy(token)[0]) == 1


def test_top_k_past_bfloat16_integers_under_a_bfloat16_floatx():
    # bfloat16 holds integers exactly only up to 256: top-k 257 must still keep 257 tokens
    # when the model runs with floatx bfloat16 (the index stays int32).
    import keras

    vocab = 600
    rank = np.random.default_rng(3).permutation(vocab)  # rank[i]: token i's rank, 0 = likeliest
    j = int(np.flatnonzero(rank == 256)[0])
    rank[j], rank[-1] = rank[-1], 256  # the 257th most likely has the last id: u ~ 1 draws it
    logits = (-0.001 * rank).astype("float32")[None]  # (1, vocab), nearly flat
    old = keras.config.floatx()
    keras.config.set_floatx("bfloat16")
    try:
        token = pick(logits, _one_row(257, 1.0, 0.0, 0.9999), 1, *plan([row(k=257)], vocab))[0]
    finally:
        keras.config.set_floatx(old)
    assert int(ops.convert_to_numpy(token)[0]) == vocab - 1


def test_a_tiny_min_p_with_top_p_still_filters_under_a_float16_floatx():
    # min_p = 1e-8 is 0 in float16: read as floatx, it would turn min-p off. 20,000 tokens each
    # just below 1e-8 of the top's probability carry 2e-4 of the mass together, which u =
    # 0.99995 reaches on JAX (its cumsum keeps the small steps; TensorFlow's loses them).
    import keras

    logits = np.full((1, 20001), -18.5, "float32")  # e^-18.5 = 9.2e-9 of the top's probability
    logits[0, 0] = 0.0
    old = keras.config.floatx()
    keras.config.set_floatx("float16")
    try:
        token = pick(logits, _one_row(0, 0.99999, 1e-8, 0.99995), 1,
                     *plan([row(p=0.99999)], 20001))[0]
    finally:
        keras.config.set_floatx(old)
    assert int(ops.convert_to_numpy(token)[0]) == 0


def test_pick_computes_every_variant_by_default():
    # Called without a plan, pick serves any row: here top-p over a top-k of at most HEAD_K.
    rng = np.random.default_rng(4)
    logits = (rng.normal(size=(32, 50)) * 3).astype("float32")
    settings = {"temperature": np.ones(32, "float32"), "top_k": np.full(32, 3, "int32"),
                "top_p": np.full(32, 0.5, "float32"), "min_p": np.zeros(32, "float32"),
                "u": rng.uniform(size=32).astype("float32")}
    token = ops.convert_to_numpy(pick(logits, settings, 1)[0])
    np.testing.assert_array_equal(
        token, ops.convert_to_numpy(pick(logits, settings, 1, True, True, 50)[0]))
    rank = (logits > logits[np.arange(32), token][:, None]).sum(-1)
    assert (rank < 3).all() and (rank == 0).sum() > 16  # top-p 0.5 mostly keeps the top one


def test_a_top_p_just_below_one_applies_under_a_bfloat16_floatx():
    # bfloat16(0.999) = 1.0: read as floatx, top-p 0.999 would be off. The last token (by id
    # and by rank) carries 5e-4 of the mass, outside the nucleus; u = 0.9999 would draw it.
    import keras

    probs = np.array([0.5, 0.3, 0.1995, 0.0005])
    logits = np.log(probs).astype("float32")[None]
    old = keras.config.floatx()
    keras.config.set_floatx("bfloat16")
    try:
        token = pick(logits, _one_row(0, 0.999, 0.0, 0.9999), 1, *plan([row(p=0.999)], 4))[0]
    finally:
        keras.config.set_floatx(old)
    assert int(ops.convert_to_numpy(token)[0]) == 2
