"""`train.precision`: its names, the one-time "bfloat16 is slower here" line, and a loss curve
in mixed_bfloat16 that follows float32's."""

import io

import keras
import numpy as np
import pytest

from kzoo.models import CausalLM
from kzoo.training import precision


def test_unknown_precision_is_one_line_listing_the_names():
    with pytest.raises(ValueError) as error:
        precision.check_precision("fp8")
    assert str(error.value) == ("train.precision must be one of ['float32', 'mixed_bfloat16']. "
                                "Received: 'fp8'")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_probe_times_a_real_matmul(dtype):
    seconds = precision.matmul_seconds(dtype, rows=64, width=32, repeats=2)
    assert 0 < seconds < 5


@pytest.fixture
def timings(monkeypatch):
    """Fixed probe times, so the test decides which precision is faster."""
    times = {}
    monkeypatch.setattr(precision, "matmul_seconds", lambda dtype, rows, width: times[dtype])
    monkeypatch.setattr(precision, "_warned", set())
    return times


def test_slower_bfloat16_is_said_once_with_both_measured_times(timings):
    timings.update(float32=0.001, bfloat16=0.0025)
    out = io.StringIO()
    line = precision.warn_if_slower("mixed_bfloat16", rows=768, width=128, stream=out)
    assert out.getvalue() == line + "\n" and "\n" not in line
    assert "2.5 ms in bfloat16 vs 1 ms in float32" in line
    assert "(768x128 @ 128x512)" in line and keras.backend.backend() in line
    assert precision.warn_if_slower("mixed_bfloat16", rows=768, width=128, stream=out) is None
    assert out.getvalue().count("\n") == 1  # once per process and shape


def test_nothing_is_said_when_bfloat16_pays_or_for_float32(timings):
    timings.update(float32=0.002, bfloat16=0.001)
    out = io.StringIO()
    assert precision.warn_if_slower("mixed_bfloat16", rows=8, width=8, stream=out) is None
    timings.update(bfloat16=1.0)
    assert precision.warn_if_slower("float32", rows=8, width=8, stream=out) is None
    assert out.getvalue() == ""


def _losses(dtype_policy, ids, steps):
    keras.utils.set_random_seed(0)
    model = CausalLM.from_preset("gpt_nano", vocab_size=65, dropout=0.0, dtype=dtype_policy)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = ids[:, :-1], ids[:, 1:]
    history = model.fit(x, y, batch_size=8, epochs=steps // (len(ids) // 8), verbose=0,
                        shuffle=False)
    return np.array(history.history["loss"])


def test_mixed_bfloat16_follows_the_float32_loss_curve(shakespeare_path):
    """The stated tolerance: every epoch's mean loss within 4% of float32's and the last
    within 2% (bfloat16 keeps 8 bits of mantissa; variables and the optimizer stay float32;
    measured: 2.6% at most, 1.4% at the end)."""
    text = shakespeare_path.read_text()[: 64 * 33]
    lookup = {c: i for i, c in enumerate(sorted(set(text)))}  # < 65 characters
    ids = np.array([lookup[c] for c in text], "int32").reshape(64, 33)
    full, mixed = _losses(None, ids, 64), _losses("mixed_bfloat16", ids, 64)
    assert full[-1] < 0.8 * full[0]  # it learned something, so the curves can differ
    np.testing.assert_allclose(mixed, full, rtol=0.04)
    np.testing.assert_allclose(mixed[-1], full[-1], rtol=0.02)


def _config(tmp_path, *overrides, text=""):
    from kzoo.training.config import load_config
    from kzoo.training.pretrain import PretrainConfig

    path = tmp_path / "config.yaml"
    path.write_text(text or "run_dir: x\n")
    return load_config(path, PretrainConfig, overrides=list(overrides))


def test_a_precision_that_does_not_exist_names_the_ones_that_do(tmp_path):
    with pytest.raises(ValueError) as error:
        _config(tmp_path, "train.precision=fp8")
    assert "'train.precision'" in str(error.value)
    assert "'float32'" in str(error.value) and "'mixed_bfloat16'" in str(error.value)


def test_the_old_name_train_dtype_still_works_with_one_line(tmp_path, capsys):
    config = _config(tmp_path, "train.dtype=mixed_bfloat16")
    assert (config.train.precision, config.train.dtype) == ("mixed_bfloat16", None)
    err = capsys.readouterr().err
    assert err == ("warning: train.dtype is deprecated; it is now train.precision "
                   "(train.precision: mixed_bfloat16)\n")


def test_a_run_folder_saved_with_train_dtype_resumes_as_the_same_run(tmp_path, capsys):
    """Folders written before the rename hold `train.dtype: float32`: the same settings, so a
    resume sees no change (the comparison is over `config_to_dict`), and nothing is printed."""
    from kzoo.training.config import config_to_dict

    old = _config(tmp_path, text="run_dir: x\ntrain:\n  dtype: float32\n")
    assert config_to_dict(old) == config_to_dict(_config(tmp_path))
    assert capsys.readouterr().err == ""
