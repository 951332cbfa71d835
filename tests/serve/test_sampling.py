"""The server's per-row sampler (`kzoo.serve.sampling.pick`) draws from exactly the distribution
that kzoo's own filter chain (`kzoo.samplers.functional`, itself checked against transformers'
logits processors) leaves: temperature -> top-k -> top-p -> min-p, row by row."""

import keras
import numpy as np
import pytest
from keras import ops

from kzoo.samplers import functional as F
from kzoo.serve.sampling import pick, settings_arrays, uniform

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
def test_pick_draws_the_filtered_distribution(row):
    rng = np.random.default_rng(row)
    logits = rng.normal(scale=2.0, size=VOCAB).astype("float32")
    temperature, top_k, top_p, min_p = ROWS[row]
    expected = _reference(logits, *ROWS[row])
    # One row per uniform number on an even grid: the tokens' shares are their probabilities.
    settings = {"temperature": np.full(GRID, temperature, "float32"),
                "top_k": np.full(GRID, top_k, "int32"), "top_p": np.full(GRID, top_p, "float32"),
                "min_p": np.full(GRID, min_p, "float32"),
                "u": ((np.arange(GRID) + 0.5) / GRID).astype("float32")}
    token, logp, top_ids, top_logps = pick(np.tile(logits, (GRID, 1)), settings, top_n=3)
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
    for i, row in enumerate(ROWS):  # u near 1: each row's least likely kept token
        kept = np.flatnonzero(_reference(logits[i], *row) > 1e-7)
        assert token[i] == kept[np.argmin(logits[i][kept])]
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
    np.testing.assert_array_equal(ops.convert_to_numpy(token), [1, 3])  # the second best


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
    ([0.5, 0.1502, 0.3498], {"min_p": 0.3}, 0.99, 1),      # bfloat16(0.3) = 0.30078125
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
