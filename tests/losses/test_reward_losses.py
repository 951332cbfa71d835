import json
import math

import keras
import numpy as np

from kzoo.losses import BradleyTerryLoss, pairwise_accuracy


def test_bradley_terry_matches_hand_computed_value():
    # -log s(1) = 0.3132617, -log s(0) = ln 2 = 0.6931472 ; mean = 0.5032044
    scores = np.array([[1.0, 0.0], [0.5, 0.5]], "float32")
    out = BradleyTerryLoss()(np.zeros(2), scores)
    np.testing.assert_allclose(float(out), (0.3132617 + math.log(2)) / 2, rtol=1e-6)


def test_bradley_terry_margin_shifts_the_gap():
    # margin 1 turns a gap of 1 into a gap of 0: ln 2
    out = BradleyTerryLoss(margin=1.0)(np.zeros(1), np.array([[1.0, 0.0]], "float32"))
    np.testing.assert_allclose(float(out), math.log(2), rtol=1e-6)


def test_pairwise_accuracy():
    scores = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], "float32")
    np.testing.assert_array_equal(np.asarray(pairwise_accuracy(None, scores)), [1.0, 0.0, 0.0])


def test_bradley_terry_json_round_trip():
    loss = BradleyTerryLoss(margin=0.5, name="bt")
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, BradleyTerryLoss)
    assert restored.margin == 0.5 and restored.name == "bt"


def test_bradley_terry_default_name():
    # the name keys the loss in `fit`'s logs and in saved configs
    assert BradleyTerryLoss().name == "bradley_terry"
    assert keras.losses.deserialize(keras.losses.serialize(BradleyTerryLoss())).name == (
        "bradley_terry")
