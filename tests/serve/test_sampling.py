"""The server's per-row sampler (`kzoo.serve.sampling.pick`) draws from exactly the distribution
that kzoo's own filter chain (`kzoo.samplers.functional`, itself checked against transformers'
logits processors) leaves: temperature -> top-k -> top-p -> min-p, row by row."""

import keras
import numpy as np
import pytest
from keras import ops

from kzoo.samplers import functional as F
from kzoo.serve.sampling import HEAD, HEAD_K, pick, plan, settings_arrays, uniform

VOCAB, GRID = 12, 4000
ROWS = [  # temperature, top_k, top_p, min_p
    (1.0, 0, 1.0, 0.0),
    (0.7, 5, 1.0, 0.0),
    (1.3, 0, 0.8, 0.0),
    (1.0, 0, 1.0, 0.15),
    (0.9, 6, 0.7, 0.05),
]


def _reference(logits, temperature, top_k, top_p, min_p):
    x = F.scale_temperature(logits[None], temperature)
    if top_k:
        x = F.top_k_filter(x, top_k)
    x = F.min_p_filter(F.top_p_filter(x, top_p), min_p)
    return ops.convert_to_numpy(ops.softmax(x, axis=-1))[0]


@pytest.mark.parametrize("row", range(len(ROWS)))
@pytest.mark.parametrize("variant", ["sorted", "planned"])
def test_pick_draws_the_filtered_distribution(row, variant):
    rng = np.random.default_rng(row)
    logits = rng.normal(scale=2.0, size=VOCAB).astype("float32")
    temperature, top_k, top_p, min_p = ROWS[row]
    expected = _reference(logits, *ROWS[row])
    # One row per uniform number on an even grid: the tokens' shares are their probabilities.
    settings = {"temperature": np.full(GRID, temperature, "float32"),
                "top_k": np.full(GRID, top_k, "int32"), "top_p": np.full(GRID, top_p, "float32"),
                "min_p": np.full(GRID, min_p, "float32"),
                "u": ((np.arange(GRID) + 0.5) / GRID).astype("float32")}
    # "planned": the variant `plan` picks for this row (a sort only for top-p without top-k)
    sort, head, width = (True, True, 0) if variant == "sorted" else plan([{
        "temperature": temperature, "top_k": top_k, "top_p": top_p}], VOCAB)
    token, logp, top_ids, top_logps = pick(np.tile(logits, (GRID, 1)), settings, 3, sort, head,
                                           width)
    shares = np.bincount(ops.convert_to_numpy(token), minlength=VOCAB) / GRID
    np.testing.assert_allclose(shares, expected, atol=1.5 / GRID + 1e-6)
    assert set(np.flatnonzero(shares)) == set(np.flatnonzero(expected > 1e-7))
    # The reported log-probs are the model's own (temperature 1, unfiltered).
    model_logps = ops.convert_to_numpy(ops.log_softmax(logits[None], axis=-1))[0]
    np.testing.assert_allclose(ops.convert_to_numpy(logp), model_logps[ops.convert_to_numpy(token)],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(top_ids)[0], np.argsort(-logits)[:3])


def test_rows_do_not_share_settings_and_zero_temperature_is_greedy():
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(len(ROWS) + 1, VOCAB)).astype("float32")
    columns = list(zip(*ROWS, strict=True))
    settings = {"temperature": np.array([*columns[0], 0.0], "float32"),
                "top_k": np.array([*columns[1], 0], "int32"),
                "top_p": np.array([*columns[2], 1.0], "float32"),
                "min_p": np.array([*columns[3], 0.0], "float32"),
                "u": np.full(len(ROWS) + 1, 0.999, "float32")}
    token = ops.convert_to_numpy(pick(logits, settings, top_n=2)[0])
    # u near 1: the last kept token in the row's draw order, which is by probability for a row
    # with top-p (sorted) and by id for the others (no sort)
    for i, row in enumerate(ROWS):
        kept = np.flatnonzero(_reference(logits[i], *row) > 1e-7)
        assert token[i] == (kept[np.argmin(logits[i][kept])] if row[2] < 1.0 else kept[-1])
    assert token[-1] == np.argmax(logits[-1])


def _settings(rows, **columns):
    """(rows,) setting arrays: the defaults (sampling at temperature 1, no filter) and `columns`."""
    base = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "u": 0.0}
    return {key: np.full(rows, columns.get(key, value),
                         "int32" if key == "top_k" else "float32")
            for key, value in base.items()}


def test_uniform_is_the_seeded_generator_of_seed_choice_and_index():
    assert uniform(7, 0, 0) == np.random.default_rng([7, 0, 0]).random()
    # a negative (or 64-bit) seed is folded into numpy's non-negative range: the low 63 bits
    assert uniform(-1, 2, 3) == np.random.default_rng([2**63 - 1, 2, 3]).random()
    draws = {uniform(7, c, i) for c in range(3) for i in range(3)}
    assert len(draws) == 9 and all(0.0 <= u < 1.0 for u in draws)


def test_settings_arrays_fill_empty_slots_with_greedy_defaults():
    row = {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "min_p": 0.05, "u": 0.25}
    arrays = settings_arrays([row, None])
    expected = {"temperature": ([0.7, 0.0], "float32"), "top_k": ([5, 0], "int32"),
                "top_p": ([0.9, 1.0], "float32"), "min_p": ([0.05, 0.0], "float32"),
                "u": ([0.25, 0.0], "float32")}
    assert set(arrays) == set(expected)
    for key, (values, dtype) in expected.items():
        assert arrays[key].dtype == dtype, key
        np.testing.assert_array_equal(arrays[key], np.array(values, dtype))


def test_outputs_are_int32_ids_and_the_model_own_top_log_probs():
    logits = np.random.default_rng(3).normal(size=(2, VOCAB)).astype("float32")
    token, logp, top_ids, top_logps = pick(logits, _settings(2, u=0.5), top_n=4)
    assert ops.convert_to_numpy(token).dtype == np.int32
    assert ops.convert_to_numpy(top_ids).dtype == np.int32
    model_logps = ops.convert_to_numpy(ops.log_softmax(logits, axis=-1))
    np.testing.assert_array_equal(ops.convert_to_numpy(top_ids), np.argsort(-logits)[:, :4])
    np.testing.assert_allclose(ops.convert_to_numpy(top_logps),
                               -np.sort(-model_logps)[:, :4], rtol=1e-6)


@pytest.mark.parametrize("setting", [{"top_k": 1}, {"top_p": 0.0}])
def test_top_k_one_and_top_p_zero_keep_only_the_most_likely_token(setting):
    logits = np.random.default_rng(4).normal(size=(3, VOCAB)).astype("float32")
    token = pick(logits, _settings(3, u=0.99, **setting), top_n=1)[0]
    np.testing.assert_array_equal(ops.convert_to_numpy(token), np.argmax(logits, axis=-1))


def test_inverse_cdf_intervals_are_half_open_and_zero_temperature_takes_the_first_maximum():
    # two tied tokens, probability 1/2 each (exact in float32): u in [0, 1/2) draws the first,
    # [1/2, 1) the second; at temperature 0 the tie goes to the first, whatever u is.
    logits = np.array([[1.0, 1.0, -3.0]] * 4, "float32")
    settings = _settings(4, top_k=2)
    settings["u"] = np.array([0.25, 0.5, 0.99, 0.99], "float32")
    settings["temperature"][3] = 0.0
    token = pick(logits, settings, top_n=1)[0]
    np.testing.assert_array_equal(ops.convert_to_numpy(token), [0, 1, 1, 0])


def test_u_rounded_up_to_one_still_draws_a_kept_token():
    # `uniform` is float64 in [0, 1); as float32 a value above 1 - 2**-25 becomes 1.0 exactly.
    logits = np.array([[3.0, 2.0, 1.0, 0.0, -1.0], [0.0, 1.0, 2.0, 3.0, 4.0]], "float32")
    u = np.float32(1.0 - 1e-9)
    assert u == 1.0
    token = pick(logits, _settings(2, top_k=2, u=u), top_n=1)[0]
    # the last kept one in id order (no top-p: no sort): the second best, then the best
    np.testing.assert_array_equal(ops.convert_to_numpy(token), [1, 4])


def test_min_p_keeps_a_token_exactly_at_the_threshold():
    # p_1 = p_max / 2 and min_p = 1/2: p_i >= min_p * p_max keeps it (as `min_p_filter` does).
    logits = np.array([[0.0, np.log(np.float32(0.5)), -5.0]], "float32")
    token = pick(logits, _settings(1, min_p=0.5, u=0.99), top_n=1)[0]
    assert int(ops.convert_to_numpy(token)[0]) == 1
    kept = ops.convert_to_numpy(F.min_p_filter(logits, 0.5))[0] > F.NEG_INF / 2
    np.testing.assert_array_equal(kept, [True, True, False])


@pytest.mark.parametrize("probs, setting, u, expected", [
    ([0.80665, 0.19335], {"temperature": 0.7}, 0.8067, 1),  # bfloat16(0.7) = 0.69921875
    ([0.6, 0.2004, 0.1996], {"top_p": 0.8}, 0.99, 1),      # bfloat16(0.8) = 0.80078125
    ([0.5, 0.3498, 0.1502], {"min_p": 0.3}, 0.99, 2),      # bfloat16(0.3) = 0.30078125
    ([0.5, 0.5], {}, 0.4995, 0),                           # bfloat16(0.4995) = 0.5
])
def test_settings_are_applied_in_float32_whatever_the_floatx(probs, setting, u, expected):
    # A server may run its model with floatx bfloat16; the settings are still float32 numbers.
    # Each case sits within bfloat16's rounding of a threshold, so a half-precision cast flips it.
    logits = np.log(np.array([probs], "float32"))
    if "temperature" in setting:  # logits whose softmax at temperature 0.7 is `probs`
        logits = logits * 0.7
    old = keras.config.floatx()
    keras.config.set_floatx("bfloat16")
    try:
        token, logp, _, _ = pick(logits, _settings(1, u=u, **setting), top_n=1)
    finally:
        keras.config.set_floatx(old)
    assert int(ops.convert_to_numpy(token)[0]) == expected
    model_logp = ops.convert_to_numpy(ops.log_softmax(logits, axis=-1))[0, expected]
    np.testing.assert_allclose(ops.convert_to_numpy(logp)[0], model_logp, rtol=1e-6)


def test_u_rounded_up_to_one_never_draws_a_token_without_probability():
    # Without filters every token is kept; one at -200 has probability 0 in float32. u = 1.0
    # (a float64 uniform just below 1, rounded) must draw the last token that carries mass.
    logits = np.array([[10.0, 0.0, -30.0, -200.0]], "float32")
    token, logp, _, _ = pick(logits, _settings(1, u=np.float32(1.0 - 1e-9)), top_n=1)
    assert int(ops.convert_to_numpy(token)[0]) in (1, 2)
    assert float(ops.convert_to_numpy(logp)[0]) > -50.0


def test_u_rounded_up_to_one_stops_at_each_row_own_last_token():
    # Rows with different numbers of kept tokens: each row stops at its own last one.
    logits = np.tile(np.array([[4.0, 3.0, 2.0, 1.0, 0.0]], "float32"), (3, 1))
    settings = _settings(3, u=np.float32(1.0))
    settings["top_k"] = np.array([1, 3, 2], "int32")
    token = pick(logits, settings, top_n=1)[0]
    np.testing.assert_array_equal(ops.convert_to_numpy(token), [0, 2, 1])


def test_plan_sorts_only_for_top_p_without_a_small_top_k_and_buckets_top_k():
    row = lambda t=1.0, k=0, p=1.0: {"temperature": t, "top_k": k, "top_p": p}  # noqa: E731
    assert plan([row(), None], 50257) == (False, False, 0)
    assert plan([row(k=40), row(k=5), None], 50257) == (False, False, 64)
    assert plan([row(k=16)], 50257) == (False, False, 16)
    assert plan([row(k=17)], 50257) == (False, False, 64)
    assert plan([row(k=3000)], 1000) == (False, False, 1000)  # never wider than the vocabulary
    assert plan([row(k=40), row(p=0.9)], 50257) == (True, False, 0)  # the sort gives top-k
    assert plan([row(k=40), row(p=0.9, k=50)], 50257) == (False, True, 64)
    assert plan([row(p=0.9, k=HEAD_K + 1)], 50257) == (True, False, 0)
    assert plan([row(p=0.9, k=9), row(p=0.5)], 50257) == (True, True, 0)
    assert plan([row(t=0.0, p=0.9, k=99)], 50257) == (False, False, 0)  # greedy: nothing


def test_a_row_draws_the_same_token_in_every_compiled_variant():
    # The step program's variant depends on the batch (a top-p row elsewhere sorts them all);
    # a row without top-p must draw the same token, bit for bit, in each.
    from kzoo import backend

    rng = np.random.default_rng(5)
    rows, vocab = 64, 5000
    logits = (rng.normal(size=(rows, vocab)) * rng.uniform(0.5, 4.0, (rows, 1))).astype("float32")
    settings = {"temperature": rng.uniform(0.3, 1.5, rows).astype("float32"),
                "top_k": rng.choice([0, 0, 1, 7, 16, 50], rows).astype("int32"),
                "top_p": np.ones(rows, "float32"),
                "min_p": rng.choice([0.0, 0.0, 0.01, 0.2], rows).astype("float32"),
                "u": rng.uniform(size=rows).astype("float32")}
    settings["top_p"][::7] = 0.9  # with top-k 0: rows that need the whole vocabulary sorted
    settings["top_p"][3::7] = 0.8  # with top-k 0 or at most HEAD_K: its head
    settings["top_k"][3::7] = rng.choice([0, 5, 40, HEAD_K], len(settings["top_k"][3::7]))
    free = settings["top_p"] >= 1.0
    in_head = ~free & (settings["top_k"] > 0)
    assert free.sum() > 30 and in_head.sum() > 3
    outputs = {}
    for variant in [(True, True, 0), (True, False, 0), (False, True, 64), (False, True, 256),
                    (False, False, 64), (False, False, vocab)]:
        program = backend.compile_function(
            lambda x, s, v=variant: pick(x, s, 2, *v))
        token, logp, _, _ = program(ops.convert_to_tensor(logits),
                                    {k: ops.convert_to_tensor(v) for k, v in settings.items()})
        outputs[variant] = ops.convert_to_numpy(token), ops.convert_to_numpy(logp)
    base_token, base_logp = outputs[(True, True, 0)]
    for (sort, head, _), (token, logp) in outputs.items():
        rows_in = free | (in_head if head else False) | (~free & ~in_head if sort else False)
        np.testing.assert_array_equal(token[rows_in], base_token[rows_in])
        np.testing.assert_array_equal(logp[rows_in], base_logp[rows_in])
    assert len(set(base_token[free].tolist())) > free.sum() // 2  # real draws


def test_top_p_over_the_head_keeps_what_the_whole_sorted_vocabulary_keeps():
    # A row with top-p and a small top-k is drawn over its HEAD most likely tokens; with the
    # same uniform numbers it draws what the sort of the whole vocabulary would.
    rng = np.random.default_rng(11)
    rows, vocab = 48, 3 * HEAD
    logits = (rng.normal(size=(rows, vocab)) * 3).astype("float32")
    settings = {"temperature": rng.uniform(0.5, 1.5, rows).astype("float32"),
                "top_k": rng.choice([3, 40, HEAD_K], rows).astype("int32"),
                "top_p": rng.uniform(0.3, 0.99, rows).astype("float32"),
                "min_p": rng.choice([0.0, 0.05], rows).astype("float32"),
                "u": rng.uniform(size=rows).astype("float32")}
    token = ops.convert_to_numpy(pick(logits, settings, 1, sort=False, head=True)[0])
    for i in range(rows):
        kept = _reference(logits[i], *(settings[k][i] for k in ("temperature", "top_k",
                                                                 "top_p", "min_p"))) > 1e-7
        order = np.argsort(-logits[i], kind="stable")
        cdf = np.cumsum(np.where(kept[order], np.exp(logits[i][order] / settings[
            "temperature"][i]), 0.0))
        want = order[min(np.searchsorted(cdf / cdf[-1], settings["u"][i], side="right"),
                         kept.sum() - 1)]
        assert token[i] == want, i
