"""`KerasStrategy`: a Keras distribution dressed as the little of `tf.distribute.Strategy`
that kzoo's recipes use (`scope()`, `num_replicas_in_sync`), so a recipe holds one kind of
strategy object on every backend. `kzoo.backend.distribution` makes them on JAX and PyTorch
(TensorFlow gives its own `tf.distribute` strategies); it is re-exported as
`kzoo.backend.KerasStrategy`.

Example:
```python
from kzoo.backend import KerasStrategy
with KerasStrategy().scope():  # one device: a scope that does nothing
    pass
```
"""

from __future__ import annotations

import contextlib


class KerasStrategy:
    """A `keras.distribution.Distribution` (or none) with the part of the tf.distribute
    interface kzoo's recipes use: `scope()` and `num_replicas_in_sync` (JAX, PyTorch).

    Args:
        distribution: keras.distribution.Distribution | None. None: one device.
        num_replicas: int. devices the batch is split between (the mesh's `batch` axis under
            a sharded layout).
        layout: str | None. "fsdp" or "tensor_parallel" for a `ModelParallel`; None otherwise.
        layout_map: keras.distribution.LayoutMap | None. the map that `ModelParallel` reads,
            filled by `kzoo.training.distribute.lay_out` before the model is built.

    Example: `KerasStrategy().num_replicas_in_sync` is 1.
    """

    def __init__(self, distribution=None, num_replicas: int = 1, layout=None, layout_map=None):
        self.distribution = distribution
        self.num_replicas_in_sync = num_replicas
        self.layout = layout
        self.layout_map = layout_map

    def scope(self):
        """The distribution's scope (variables created in it are laid out on its devices)."""
        if self.distribution is None:
            return contextlib.nullcontext()
        return self.distribution.scope()

    def __repr__(self) -> str:
        return (f"KerasStrategy({type(self.distribution).__name__}, "
                f"num_replicas_in_sync={self.num_replicas_in_sync})")
