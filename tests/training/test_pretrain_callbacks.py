"""Callbacks: atomic backups and restore, NaN guard, sampling, loss plot, AdamW round trip."""

import json
import math

import keras
import numpy as np

from kzoo.models import CausalLM
from kzoo.tokenizers import ByteTokenizer
from kzoo.training.callbacks import (
    LATEST,
    Backup,
    TrainingGuard,
    generate_text,
    plot_metrics,
)
from kzoo.training.checkpoints import restore_checkpoint
from kzoo.training.optimizers import AdamW, build_adamw


def tiny_model():
    model = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=16)
    model.compile(optimizer=build_adamw(model, 1e-2), jit_compile=False)
    return model


def test_backup_keeps_the_newest_and_restores_weights_and_optimizer(tmp_path):
    model = tiny_model()
    x = np.random.default_rng(0).integers(0, 257, (2, 9))
    guard = TrainingGuard()
    backup = Backup(tmp_path, state={"best": 1.5}, guard=guard, keep=2)
    backup.set_model(model)
    for _ in range(3):
        model.fit(x[:, :-1], x[:, 1:], epochs=1, verbose=0)  # one step each
        backup.on_epoch_end(0, {"loss": 1.0})
    assert (tmp_path / LATEST).read_text() == "step-0000003"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "step-0000002",
                                                          "step-0000003"]
    model.fit(x[:, :-1], x[:, 1:], epochs=1, verbose=0)
    backup.on_epoch_end(0, {"loss": math.nan})  # a diverged model is never saved
    assert (tmp_path / LATEST).read_text() == "step-0000003"
    guard.stopped_step = 4
    backup.on_epoch_end(0, {"loss": 1.0})  # nor one the guard stopped, with a finite mean
    assert (tmp_path / LATEST).read_text() == "step-0000003"

    fresh = tiny_model()
    state = restore_checkpoint(fresh, tmp_path)
    assert state == {"best": 1.5, "logs": {"loss": 1.0}, "step": 3}
    assert int(fresh.optimizer.iterations.numpy()) == 3
    assert restore_checkpoint(fresh, tmp_path / "none") is None


def test_guard_stops_on_nan_and_on_a_finite_explosion():
    model = tiny_model()
    guard = TrainingGuard(max_loss_factor=4.0)
    guard.set_model(model)
    guard.on_train_batch_end(0, {"loss": 2.0})  # the reference
    guard.on_train_batch_end(1, {"loss": 7.9})
    assert not guard.tripped and not model.stop_training
    guard.on_train_batch_end(2, {"loss": 8.1})
    assert guard.tripped and model.stop_training and "exploded to 8.1" in guard.reason
    nan = TrainingGuard(max_loss_factor=None)
    nan.set_model(tiny_model())
    nan.on_train_batch_end(0, {"loss": 1e30})
    assert not nan.tripped  # no factor: finite values pass
    nan.on_train_batch_end(1, {"loss": float("nan")})
    assert nan.tripped and nan.stopped_step == 0 and "NaN" in nan.reason


def test_generate_text_is_seeded_and_greedy_is_deterministic():
    model, tok = tiny_model(), ByteTokenizer()
    a = generate_text(model, tok, "ab", max_new_tokens=5, temperature=0.0)
    b = generate_text(model, tok, "ab", max_new_tokens=5, temperature=0.0)
    assert a == b and a.startswith("ab")
    s1 = generate_text(model, tok, "ab", max_new_tokens=20, seed=1)
    assert s1 == generate_text(model, tok, "ab", max_new_tokens=20, seed=1)
    # Positions run out at max_sequence_length (16): prompt 2 + at most 14 new tokens.
    long = generate_text(model, tok, "ab", max_new_tokens=100, temperature=0.0)
    assert len(tok.encode(long)) <= 16 or "\ufffd" in long


def test_plot_metrics(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("epoch,loss,step,val_loss\n0,3.0,10,3.1\n1,2.5,20,2.7\n")
    assert plot_metrics(csv_path, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not plot_metrics(tmp_path / "missing.csv", tmp_path / "x.png")


def test_adamw_json_round_trip():
    opt = AdamW(learning_rate=1e-3, weight_decay=0.1, global_clipnorm=1.0, beta_2=0.99)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(opt)))
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is AdamW
    assert restored.get_config() == opt.get_config()
