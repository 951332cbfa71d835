"""Helpers the test files share (importable as `tests.helpers`: pytest puts the checkout on
`sys.path`, see `pythonpath` in pyproject.toml)."""

import importlib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_module(path, name: str | None = None):
    """Import the Python file at `path` as a fresh module (recipes are scripts, not a package).

    Example:
    ```python
    sft = load_module(ROOT / "recipes/sft.py")
    ```
    """
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_recipe(name: str):
    """The recipe `kzoo.recipes.<name>` (what `recipes/<name>.py` and `kzoo <name>` run)."""
    return importlib.import_module(f"kzoo.recipes.{name}")


def sets(*items):
    """`--set` arguments for a recipe's command line: `sets("a=1", "b=2")`."""
    return [a for item in items for a in ("--set", item)]


def one_error_line(capsys) -> str:
    """Assert the recipe wrote exactly one `error: ...` line on stderr (no traceback); return it."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def value_and_grads(fn, *arrays):
    """`fn(*tensors)` (a scalar) and its gradients with respect to each array, as numpy, on
    the current Keras backend: the tests of the differentiable pieces run on every backend.

    Example:
    ```python
    value, (grad,) = value_and_grads(lambda x: (x * x).sum(), np.ones(3, "float32"))
    ```
    """
    import keras
    import numpy as np
    from keras import ops

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(arrays))))(
            *[jax.numpy.asarray(a, "float32") for a in arrays])
    elif backend == "torch":
        import torch

        tensors = [torch.tensor(np.asarray(a, "float32"), requires_grad=True) for a in arrays]
        value = fn(*tensors)
        value.backward()
        grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in tensors]
    else:
        import tensorflow as tf

        variables = [tf.Variable(np.asarray(a, "float32")) for a in arrays]
        with tf.GradientTape() as tape:
            value = fn(*variables)
        grads = [g if g is not None else tf.zeros_like(v)
                 for g, v in zip(tape.gradient(value, variables), variables)]
    return float(ops.convert_to_numpy(value)), [np.asarray(ops.convert_to_numpy(g))
                                                for g in grads]
