"""Checks every kzoo layer must pass (the Keras layer contract and trainability), as fixtures
over the shared harness (`tests.harness`)."""

import numpy as np
import pytest

from tests.harness import check_fit_moves_every_weight, check_json_round_trip


@pytest.fixture
def check_roundtrip():
    return check_json_round_trip


@pytest.fixture
def check_fit_changes_all_weights():
    return lambda layer, inputs, make_head=None: check_fit_moves_every_weight(
        layer, inputs, make_head)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
