"""Training curves from a run's metrics CSV (Keras `CSVLogger` format): loss, DPO rewards.

Example:
```python
from pathlib import Path
from kzoo.viz import plot_curves, read_metrics
Path("metrics.csv").write_text("epoch,step,loss,val_loss\\n0,100,3.2,3.3\\n1,200,2.5,2.7\\n")
metrics = read_metrics("metrics.csv")          # {"epoch": [...], "step": [...], ...}
plot_curves(metrics, [["loss", "val_loss"]], "curves.png", x="step")
```
"""

from __future__ import annotations

import csv
import math
from pathlib import Path


def read_metrics(path) -> dict[str, list[float]]:
    """Read a metrics CSV into `{column: values}`; empty cells become NaN.

    Args:
        path: str or Path. a CSV with a header row and numeric cells.

    Raises:
        ValueError: the file is missing, empty, or a cell is not a number (the message names
            the file, line and column).

    Example:
    ```python
    from pathlib import Path
    from kzoo.viz import read_metrics
    Path("m.csv").write_text("step,loss\\n1,2.5\\n2,\\n")
    read_metrics("m.csv")          # {"step": [1.0, 2.0], "loss": [2.5, nan]}
    ```
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Metrics file {path} does not exist.")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f"Metrics file {path} is empty (no header row).")
        columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames}
        for row in reader:
            for name in reader.fieldnames:
                cell = (row.get(name) or "").strip()
                try:
                    columns[name].append(float(cell) if cell else math.nan)
                except ValueError:
                    raise ValueError(
                        f"{path}, line {reader.line_num}, column {name!r}: {cell!r} is not a "
                        "number."
                    ) from None
    if not columns[reader.fieldnames[0]]:
        raise ValueError(f"Metrics file {path} has a header but no rows.")
    return columns


def plot_curves(metrics, panels, path, x: str = "step", titles=None, ylabels=None,
                labels=None, reference_lines=None) -> Path:
    """Plot metric columns against `x`, one panel per group of columns, into a PNG.

    Args:
        metrics: dict[str, list[float]] or str or Path. columns, or a CSV for `read_metrics`.
        panels: list[list[str]]. columns drawn together, one list per panel.
        path: str or Path. the PNG to write (parent folders are created).
        x: str. the column on the horizontal axis ("step" or "epoch"); a missing column
            falls back to 1, 2, 3, ...
        titles: list[str] or None. one title per panel.
        ylabels: list[str] or None. one y-axis label per panel.
        labels: dict[str, str] or None. legend text per column (default: the column name).
        reference_lines: dict[int, float] or None. a dashed horizontal line per panel index
            (e.g. 0.5 for chance accuracy).

    Raises:
        ValueError: a requested column is missing; the message lists the available ones.

    Returns the path written.

    Example:
    ```python
    from kzoo.viz import plot_curves
    metrics = {"step": [1, 2, 3], "rewards/accuracy": [0.6, 0.7, 0.8]}
    plot_curves(metrics, [["rewards/accuracy"]], "accuracy.png", reference_lines={0: 0.5})
    ```
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(metrics, dict):
        metrics = read_metrics(metrics)
    missing = sorted({c for panel in panels for c in panel} - set(metrics))
    if missing:
        raise ValueError(f"Columns {missing} are not in the metrics; available: "
                         f"{sorted(metrics)}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"Plot path must end in .png. Received: {path}")
    n_rows = max(len(v) for v in metrics.values())
    xs = metrics.get(x) or list(range(1, n_rows + 1))
    labels = labels or {}
    reference_lines = reference_lines or {}
    figure = Figure(figsize=(4.6 * len(panels), 3.4))
    FigureCanvasAgg(figure)
    for i, columns in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), i + 1)
        for column in columns:
            points = [(a, b) for a, b in zip(xs, metrics[column]) if not math.isnan(b)]
            axes.plot([a for a, _ in points], [b for _, b in points], marker="o",
                      markersize=3, label=labels.get(column, column))
        if i in reference_lines:
            axes.axhline(reference_lines[i], color="grey", linestyle="--", linewidth=1)
        axes.set_xlabel(x if x in metrics else "interval")
        if ylabels:
            axes.set_ylabel(ylabels[i])
        if titles:
            axes.set_title(titles[i], fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=90)
    return path
