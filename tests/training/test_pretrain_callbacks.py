"""Callbacks: atomic backups and restore, NaN guard, sampling, loss plot, AdamW round trip."""

import json
import math

import keras
import numpy as np

from kzoo.models import CausalLM
from kzoo.tokenizers import ByteTokenizer
from kzoo.training.callbacks import (
    LATEST,
    AtomicBackup,
    StopOnNaN,
    generate_text,
    plot_metrics,
    restore_backup,
)
from kzoo.training.optimizers import AdamW, build_adamw


def tiny_model():
    model = CausalLM.from_preset("gpt_nano", vocab_size=257, max_sequence_length=16)
    model.compile(optimizer=build_adamw(model, 1e-2), jit_compile=False)
    return model


def test_backup_keeps_the_newest_and_restores_weights_and_optimizer(tmp_path):
    model = tiny_model()
    x = np.random.default_rng(0).integers(0, 257, (2, 9))
    model.fit(x[:, :-1], x[:, 1:], epochs=1, verbose=0)
    backup = AtomicBackup(tmp_path, steps_per_epoch=5, state={"best": 1.5}, keep=2)
    backup.set_model(model)
    for epoch in range(3):
        backup.on_epoch_end(epoch, {"loss": 1.0})
    assert (tmp_path / LATEST).read_text() == "step-0000015"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "step-0000010",
                                                          "step-0000015"]
    backup.on_epoch_end(3, {"loss": math.nan})  # a diverged model is never saved
    assert (tmp_path / LATEST).read_text() == "step-0000015"

    fresh = tiny_model()
    state = restore_backup(fresh, tmp_path)
    assert state == {"best": 1.5, "epoch": 3, "step": 15}
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(fresh.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    assert restore_backup(fresh, tmp_path / "none") is None


def test_stop_on_nan_records_the_step():
    guard = StopOnNaN(steps_per_epoch=10)
    guard.set_model(tiny_model())
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(3, {"loss": 2.0})
    assert guard.nan_step is None and not guard.model.stop_training
    guard.on_train_batch_end(4, {"loss": float("nan")})
    assert guard.nan_step == 25 and guard.model.stop_training


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
