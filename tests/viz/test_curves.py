"""Metrics CSV reading and curve plots."""

import math

import pytest

from kzoo.viz import plot_curves, read_metrics


def _csv(tmp_path, text):
    path = tmp_path / "metrics.csv"
    path.write_text(text)
    return path


def test_read_metrics_columns_and_blanks(tmp_path):
    path = _csv(tmp_path, "epoch,step,loss,val_loss\n0,100,3.5,\n1,200,2.5,2.75\n")
    metrics = read_metrics(path)
    assert metrics["step"] == [100.0, 200.0]
    assert metrics["loss"] == [3.5, 2.5]
    assert math.isnan(metrics["val_loss"][0]) and metrics["val_loss"][1] == 2.75


def test_read_metrics_bad_cell_names_line_and_column(tmp_path):
    path = _csv(tmp_path, "step,loss\n1,2.0\n2,oops\n")
    with pytest.raises(ValueError, match=r"metrics.csv, line 3, column 'loss': 'oops'"):
        read_metrics(path)


def test_read_metrics_missing_and_empty(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_metrics(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="empty"):
        read_metrics(_csv(tmp_path, ""))
    with pytest.raises(ValueError, match="no rows"):
        read_metrics(_csv(tmp_path, "step,loss\n"))


def test_plot_curves_png_and_missing_column(tmp_path):
    path = _csv(tmp_path, "step,rewards/margin,rewards/accuracy\n1,0.1,0.5\n2,0.3,0.7\n")
    out = plot_curves(path, [["rewards/margin"], ["rewards/accuracy"]], tmp_path / "c.png",
                      reference_lines={1: 0.5})
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"\['val_loss'\] are not in the metrics; available"):
        plot_curves(path, [["val_loss"]], tmp_path / "d.png")
