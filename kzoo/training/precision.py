"""`train.precision`: the names a run's compute precision takes, and whether bfloat16 pays here.

`mixed_bfloat16` keeps float32 variables (and optimizer state) and computes the layers in
bfloat16, Keras' dtype policy of that name. It pays most where the backend's matrix kernels
use the CPU's bfloat16 units: PyTorch's oneDNN does on AVX-512-BF16 / AMX CPUs (2.1x a
float32 gpt_mini step on a 2-core AMD EPYC with AVX-512-BF16); XLA's CPU dot (TensorFlow,
JAX) runs bfloat16 more slowly than float32 there, though JAX still gains a little elsewhere
in the step. Rather than keep a table of CPUs and backends, `warn_if_slower` times the
model's own feed-forward matmul both ways once per process and prints one line with the
measured times when bfloat16 loses; the run goes on in the precision it asked for.

Example:

>>> from kzoo.training.precision import PRECISIONS, check_precision
>>> sorted(PRECISIONS)
['float32', 'mixed_bfloat16']
>>> check_precision("mixed_bfloat16")
'mixed_bfloat16'
"""

from __future__ import annotations

import sys
import time

# name -> the Keras dtype policy a model is built with (None: Keras' default, float32)
PRECISIONS = {"float32": None, "mixed_bfloat16": "mixed_bfloat16"}

_warned: set = set()


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; else the platform's processor string)."""
    import platform

    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def check_precision(name: str, where: str = "train.precision") -> str:
    """`name` itself when it is one of `PRECISIONS`; else one `ValueError` line listing them.

    Args:
        name: str. a precision name from a config or a command line.
        where: str. the field the name came from, for the message.
    """
    if name not in PRECISIONS:
        raise ValueError(f"{where} must be one of {sorted(PRECISIONS)}. Received: {name!r}")
    return name


def matmul_seconds(dtype: str, rows: int, width: int, repeats: int = 20) -> float:
    """Best wall time of one compiled `(rows, width) @ (width, 4 * width)` matmul in `dtype`
    on the current Keras backend (the shape of a transformer's feed-forward input projection).

    Args:
        dtype: str. "float32" or "bfloat16".
        rows: int. tokens per step (batch x block).
        width: int. the model's hidden size.
        repeats: int. timed calls (the fastest counts: the least disturbed by other work).
    """
    import numpy as np
    from keras import ops

    from kzoo import backend

    rng = np.random.default_rng(0)
    x = ops.convert_to_tensor(rng.standard_normal((rows, width)), dtype)
    w = ops.convert_to_tensor(rng.standard_normal((width, 4 * width)), dtype)
    fn = backend.compile_function(lambda a, b: ops.sum(ops.matmul(a, b)), jit_compile=True)
    float(fn(x, w))  # compile; the sum brings one number back, so the wait is the matmul's
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        float(fn(x, w))
        best = min(best, time.perf_counter() - start)
    return best


def warn_if_slower(precision: str, rows: int, width: int, stream=None) -> str | None:
    """Once per (backend, shape) and process: when `precision` is `mixed_bfloat16` and a
    bfloat16 matmul of the model's shape is slower than a float32 one here, print one line
    naming both times to `stream` (stderr) and return it; else None.

    Args:
        precision: str. one of `PRECISIONS`.
        rows: int. tokens per step (batch x block).
        width: int. the model's hidden size.
        stream: file or None. where the line goes (None: sys.stderr).

    Example:
    ```python
    warn_if_slower("mixed_bfloat16", rows=768, width=128)  # None where bfloat16 pays
    ```
    """
    from kzoo import backend

    if PRECISIONS[check_precision(precision)] != "mixed_bfloat16":
        return None
    key = (backend.name(), rows, width)
    if key in _warned:
        return None
    _warned.add(key)
    full, half = matmul_seconds("float32", rows, width), matmul_seconds("bfloat16", rows, width)
    if half <= full:
        return None
    # A matmul, not a whole step: elementwise work may still gain from bfloat16 (JAX trains
    # gpt_baby 1.2x faster in it on a CPU where this dot is slower), so the line says what it
    # measured and that training may be slower, not that it is.
    line = (f"warning: train.precision=mixed_bfloat16 may train slower here: the model's "
            f"feed-forward matmul ({rows}x{width} @ {width}x{4 * width}) takes "
            f"{half * 1e3:.3g} ms in bfloat16 vs {full * 1e3:.3g} ms in float32 on {key[0]} "
            f"({cpu_name()}); training goes on in mixed_bfloat16")
    print(line, file=stream or sys.stderr)
    return line
