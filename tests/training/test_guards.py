"""The divergence guards on stand-in models (fast, no training): pre-training's `TrainingGuard`
(kzoo.training.divergence) and the fine-tuning recipes' `NaNGuard` (kzoo.training.guard):
which losses trip them, where they stop, the reason they give, and what they leave alone."""

import types

import numpy as np
import pytest

from kzoo.training.divergence import (
    NaNLossError,
    StopOnNaN,
    TrainingGuard,
    _finite,
    global_step,
)
from kzoo.training.guard import NaNGuard


def stand_in(step=0):
    """What the guards read: optimizer.iterations, stop_training, weights."""
    model = types.SimpleNamespace(optimizer=types.SimpleNamespace(iterations=np.int64(step)),
                                  stop_training=False, weights=[np.zeros(2)])
    model.get_weights = lambda: [w.copy() for w in model.weights]
    model.set_weights = lambda ws: setattr(model, "weights", [w.copy() for w in ws])
    return model


def test_global_step_reads_the_optimizer_iterations():
    assert global_step(stand_in(41)) == 41 and isinstance(global_step(stand_in(3)), int)


def test_training_guard_trips_on_nan_and_remembers_the_step():
    model = stand_in(5)
    guard = TrainingGuard()
    guard.set_model(model)
    assert not guard.tripped and guard.nan_step is None and guard.max_loss_factor is None
    assert guard.reason is None and guard.reference_loss is None
    guard.on_train_batch_end(0, {"loss": 2.0})
    guard.on_train_batch_end(1, {})  # no loss logged: nothing to check
    guard.on_train_batch_end(2, None)
    guard.on_train_batch_end(3, {"loss": 1e9})  # no factor: only NaN/inf trips it
    assert not guard.tripped and not model.stop_training and guard.reference_loss == 2.0
    model.optimizer.iterations = np.int64(9)
    guard.on_train_batch_end(4, {"loss": float("inf")})
    assert guard.tripped and guard.stopped_step == 9 == guard.nan_step and model.stop_training
    assert guard.reason == "the training loss became NaN/inf"
    model.optimizer.iterations = np.int64(12)
    guard.on_train_batch_end(5, {"loss": float("nan")})  # already tripped: the first stop stays
    assert guard.stopped_step == 9
    assert StopOnNaN is TrainingGuard and issubclass(NaNLossError, RuntimeError)


def test_training_guard_explosion_is_relative_to_the_first_loss():
    model = stand_in(3)
    guard = TrainingGuard(max_loss_factor=4.0)
    guard.set_model(model)
    guard.on_train_batch_end(0, {"loss": float("nan")})  # a NaN first loss trips it too
    assert guard.tripped and guard.reference_loss is None
    guard = TrainingGuard(max_loss_factor=4.0)
    guard.set_model(model)
    guard.on_train_batch_end(0, {"loss": np.float32(2.5)})
    guard.on_train_batch_end(1, {"loss": 10.0})  # exactly 4x: not above
    assert not guard.tripped and guard.reference_loss == 2.5
    guard.on_train_batch_end(2, {"loss": 10.5})
    assert guard.tripped and guard.stopped_step == 3 and model.stop_training
    assert guard.reason == ("the training loss exploded to 10.5, above 4 x the starting loss "
                            "2.5 (train.max_loss_factor)")


def test_training_guard_keeps_a_resumed_reference_loss():
    guard = TrainingGuard(max_loss_factor=2.0, reference_loss=1.0)
    guard.set_model(stand_in())
    guard.on_train_batch_end(0, {"loss": 2.5})  # above 2 x the earlier run's first loss
    assert guard.tripped and guard.reference_loss == 1.0


def test_nan_guard_defaults_and_explosion():
    model = stand_in()
    guard = NaNGuard(model)
    assert guard.keys == ("loss", "rewards/chosen", "rewards/rejected")
    assert guard.stopped_at is None and guard.reason is None and guard.good_step == 0
    assert (guard.checkpoint_path, guard.snapshot_every, guard.max_loss_factor) == (None, 1, None)
    guard.set_model(model)
    guard.on_train_begin()
    for step, loss in enumerate([1.0, 50.0, 1e6]):  # no factor: only NaN/inf trips it
        model.weights = [np.full(2, float(step + 1))]
        guard.on_train_batch_end(step, {"loss": loss})
    assert guard.stopped_at is None and guard.good_step == 3  # a snapshot after every step
    model.weights = [np.full(2, 99.0)]
    guard.on_train_batch_end(3, {"rewards/rejected": float("-inf")})
    assert guard.stopped_at == (0, 3) and guard.reason == "non-finite rewards/rejected"
    np.testing.assert_array_equal(model.weights[0], [3.0, 3.0])


@pytest.mark.parametrize("first, later, problem", [
    (2.0, 8.0, None),  # exactly 4x: not above
    (2.0, 8.5, "loss 8.5 exploded above 4 x its first value 2"),
    (-1.0, 100.0, None),  # a negative first loss (a DPO variant) has no explosion scale
    (0.0, 100.0, None),
    (0.5, 2.5, "loss 2.5 exploded above 4 x its first value 0.5"),  # a first loss below 1
])
def test_nan_guard_explosion_threshold(first, later, problem):
    model = stand_in()
    guard = NaNGuard(model, keys=("loss",), max_loss_factor=4.0)
    guard.set_model(model)
    guard.on_train_begin()
    guard.on_train_batch_end(0, {"loss": first})
    guard.on_train_batch_end(1, {"loss": later})
    assert guard.reason == problem
    assert guard.stopped_at == (None if problem is None else (0, 1))


def test_nan_guard_names_every_bad_key():
    model = stand_in()
    guard = NaNGuard(model, keys=["loss", "a", "b"])
    guard.set_model(model)
    guard.on_train_begin()
    guard.on_train_batch_end(0, {"loss": float("nan"), "a": 1.0, "b": float("inf")})
    assert guard.reason == "non-finite loss, b" and isinstance(guard.keys, tuple)


def test_nan_guard_writes_real_keras_weights_atomically(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "good.weights.h5"
    guard = NaNGuard(model, checkpoint_path=path)  # a Path works as well as a str
    guard.set_model(model)
    guard.on_train_begin()
    good = [w.copy() for w in model.get_weights()]
    guard.on_train_batch_end(0, {"loss": 1.0})
    guard.on_epoch_end(0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.weights.h5"]  # no temp file
    model.set_weights([np.full_like(w, 7.0) for w in good])
    guard.on_train_batch_end(1, {"loss": float("nan")})  # restores the snapshot, writes it
    for w, want in zip(model.get_weights(), good):
        np.testing.assert_array_equal(w, want)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.load_weights(path)
    for w, want in zip(other.get_weights(), good):
        np.testing.assert_array_equal(w, want)


def test_finite_is_false_for_missing_nan_and_inf():
    # what the checkpoint and sample callbacks ask before they write anything
    assert _finite(1.5) and _finite(np.float32(-2.0)) and _finite(0)
    assert not _finite(None) and not _finite(float("nan")) and not _finite(np.float32("inf"))
    assert not _finite(float("-inf"))


def test_nan_guard_says_where_it_stopped_and_writes_beside_the_checkpoint(tmp_path, capsys,
                                                                          monkeypatch):
    import os

    import kzoo.training.guard as guard_module

    renames, real_replace = [], os.replace

    def replace(src, dst):
        renames.append((str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(guard_module.os, "replace", replace)
    model = stand_in()
    model.save_weights = lambda path: open(path, "w").close()
    path = tmp_path / "run" / "good.weights.h5"
    path.parent.mkdir()
    guard = NaNGuard(model, checkpoint_path=str(path))
    guard.set_model(model)
    guard.on_train_begin()
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 1.0})
    capsys.readouterr()
    guard.on_train_batch_end(1, {"loss": float("nan")})
    assert capsys.readouterr().out == ("NaNGuard: non-finite loss at epoch 2 step 1; stopping "
                                       "and restoring the last good weights.\n")
    # the temporary file sits beside the checkpoint: a rename within one folder is atomic
    # (across file systems os.replace fails)
    assert renames == [(str(tmp_path / "run" / "good.tmp.weights.h5"), str(path))]
