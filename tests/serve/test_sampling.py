"""The server's per-row sampler (`kzoo.serve.sampling.pick`) draws from exactly the distribution
that kzoo's own filter chain (`kzoo.samplers.functional`, itself checked against transformers'
logits processors) leaves: temperature -> top-k -> top-p -> min-p, row by row."""

import numpy as np
import pytest
from keras import ops

from kzoo.samplers import functional as F
from kzoo.serve.sampling import pick

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
