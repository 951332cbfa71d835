"""`Slot`: one kzoo variable and the Hugging Face tensors it is made of.

kzoo fuses the query/key/value projections into one matmul and the gate/up projections into
another, so a slot may hold several tensors side by side along its last axis. torch's `Linear`
stores (out, in) where Keras' `Dense` stores (in, out), so those are transposed; GPT-2's
`Conv1D` already stores (in, out). Family modules list their slots with `slot`;
`kzoo.interop.hf_weights` moves the tensors.

Example:
```python
from kzoo.interop.slots import slot
from kzoo.models import CausalLM
model = CausalLM.from_preset("llama_nano")
slot(model.final_norm.scale, "model.norm.weight").hf_shape(0)   # (64,)
```
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Slot:
    """A kzoo variable filled from `names`, placed side by side along its last axis.

    No family needs a value transform beyond the transpose: Gemma's norms store `w` and
    compute `1 + w`, which kzoo's `norm_scale_offset=1.0` reproduces on the stored value.
    """

    variable: object
    names: tuple[str, ...]
    sizes: tuple[int, ...]  # each tensor's width along the variable's last axis
    transpose: bool  # torch Linear (out, in) <-> Keras Dense (in, out)

    def hf_shape(self, i: int) -> tuple[int, ...]:
        shape = (*tuple(self.variable.shape)[:-1], self.sizes[i])
        return shape[::-1] if self.transpose else shape


def slot(variable, names, transpose=False, sizes=None) -> Slot:
    """A `Slot` for `variable` from one tensor name or several (with their `sizes`)."""
    names = (names,) if isinstance(names, str) else tuple(names)
    sizes = tuple(sizes) if sizes else (int(variable.shape[-1]),)
    return Slot(variable, names, sizes, transpose and len(variable.shape) == 2)


def dense(layer, names, sizes=None) -> list[Slot]:
    """A torch `Linear` (or several fused): its kernel transposed, its bias when it has one."""
    names = [names] if isinstance(names, str) else names
    found = [slot(layer.kernel, [n + ".weight" for n in names], True, sizes)]
    if layer.use_bias:
        found.append(slot(layer.bias, [n + ".bias" for n in names], False, sizes))
    return found
