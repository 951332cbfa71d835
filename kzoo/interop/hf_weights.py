"""Where each Hugging Face tensor lives in a `CausalLM`, and moving them in and out.

A `Slot` (`kzoo.interop.slots`) is one kzoo variable and the Hugging Face tensors it is made
of; each family module (`kzoo.models.families`) lists its slots, and this module adds the
untied output head, reads checkpoints (one file or shards) and copies tensor by tensor.

Example:
```python
from kzoo.interop.hf_weights import slots
from kzoo.models import CausalLM
[s.names for s in slots(CausalLM.from_preset("gpt_nano"), "gpt2")][:2]
# [('transformer.wte.weight',), ('transformer.wpe.weight',)]
```
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from keras import ops

from kzoo.interop.safetensors_io import SafetensorsFile, convert
from kzoo.interop.slots import Slot
from kzoo.interop.slots import slot as _slot  # named as before slots moved there

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Buffers some checkpoints store that are recomputed, not learned: GPT-2's causal mask and
# older RoPE models' inverse frequencies.
_BUFFERS = re.compile(r"(\.attn\.(masked_)?bias|rotary_emb\.inv_freq)$")


def slots(model, family: str, prefix: str | None = None) -> list[Slot]:
    """Every variable of `model` with the Hugging Face tensors it holds.

    Args:
        model: CausalLM. the kzoo model.
        family: str. a registered family's name ("gpt2", "llama", "mistral", ...; see
            `kzoo.models.families.list_families`).
        prefix: str or None. the checkpoint's name prefix; default that of the family's
            `...ForCausalLM` classes ("transformer." for GPT-2, "model." for Llama).
    """
    family = family_of(family)
    found = family.slots(model, family.prefix if prefix is None else prefix)
    if not model.tie_embeddings:
        found.append(_slot(model.token_embedding.reverse_embeddings, "lm_head.weight", True))
    return found


def family_of(family):
    """A registered family from its name (or the family itself)."""
    from kzoo.models.families import get_family

    return get_family(family) if isinstance(family, str) else family


class Checkpoint:
    """The safetensors tensors of a Hugging Face folder: one file, or shards with an index.

    Args:
        folder: str | Path. the model folder.

    Example:
    ```python
    from kzoo.interop.hf_weights import Checkpoint
    from kzoo.models import CausalLM
    CausalLM.from_preset("gpt_nano").save_hf("gpt_nano_hf")
    sorted(Checkpoint("gpt_nano_hf").names())[:2]   # ['transformer.h.0.attn.c_attn.bias', ...]
    ```

    Raises:
        ValueError: one line when the folder has no safetensors weights (only pickle files
            are refused by name), the index is damaged, or a shard it names is missing.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                weight_map = {str(k): str(v) for k, v in weight_map.items()}
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise ValueError(f"{index} is not a safetensors index (needs a 'weight_map' "
                                 f"of tensor -> file): {error}") from None
            self.where = weight_map
        elif (self.folder / SINGLE_FILE).is_file():
            self.where = {name: SINGLE_FILE for name in
                          SafetensorsFile(self.folder / SINGLE_FILE).keys()}
        else:
            pickles = sorted(p.name for p in self.folder.glob("*.bin")) + sorted(
                p.name for p in self.folder.glob("*.pt*"))
            extra = (f"; it has {pickles}, pickle files kzoo never loads (they can run code): "
                     "convert them to safetensors on a trusted machine" if pickles else "")
            raise ValueError(f"{self.folder} has neither {SINGLE_FILE} nor {INDEX_FILE}{extra}")
        self._files: dict[str, SafetensorsFile] = {}
        for shard in sorted(set(self.where.values())):
            path = self.folder / shard
            if not path.is_file():
                names = sorted(n for n, f in self.where.items() if f == shard)
                raise ValueError(f"{INDEX_FILE} names shard {shard} ({len(names)} tensors, "
                                 f"e.g. {names[0]!r}) but {path} is missing")

    def names(self) -> set[str]:
        return set(self.where)

    def file(self, name: str) -> SafetensorsFile:
        shard = self.where[name]
        if shard not in self._files:
            self._files[shard] = SafetensorsFile(self.folder / shard)
        handle = self._files[shard]
        if name not in handle:
            raise ValueError(f"{INDEX_FILE} puts tensor {name!r} in {shard}, but "
                             f"{handle.path} does not hold it")
        return handle


def _prefix(names: set[str], family) -> str:
    """The checkpoint's prefix: `...ForCausalLM` files use the family's ("transformer.",
    "model."), base-model files (GPT-2 on the Hub, saved from GPT2Model) none."""
    for prefix in ("transformer.", "model.", ""):
        if prefix + family.first_tensor in names:
            return prefix
    return family.prefix


_CHUNK_BYTES = 32 * 2**20


def _assign_in_chunks(slot: Slot, handle: SafetensorsFile) -> bool:
    """Copy a large tensor (an embedding, an output head) a few rows at a time, so loading
    holds a few MB of it beside the model instead of up to three copies (the read, the
    conversion, the backend's tensor). TensorFlow variables take sliced assignments; on other
    backends this returns False and the tensor goes in whole."""
    import keras

    name = slot.names[0]
    shape = handle.shape(name)
    row_bytes = int(np.prod(shape[1:])) * 4
    if keras.backend.backend() != "tensorflow" or len(shape) != 2 or (
            shape[0] * row_bytes <= 2 * _CHUNK_BYTES):
        return False
    target = slot.variable.value  # the tf.Variable
    step = max(1, _CHUNK_BYTES // row_bytes)
    for lo in range(0, shape[0], step):
        hi = min(lo + step, shape[0])
        chunk = convert(handle.get(name, rows=(lo, hi)), slot.variable.dtype)
        if slot.transpose:
            target[:, lo:hi].assign(chunk.T)
        else:
            target[lo:hi].assign(chunk)
    return True


def load_weights(model, checkpoint: Checkpoint, family: str) -> None:
    """Fill every variable of `model` from `checkpoint`, one tensor at a time.

    Args:
        model: CausalLM. built from the checkpoint's config (`kzoo_args_from_hf`).
        checkpoint: Checkpoint. the folder's tensors.
        family: str. the family's name (`kzoo_args_from_hf` returns it).

    All names and shapes are checked from the headers before any data is read, so a wrong
    folder fails in a second, not after minutes of copying.

    Raises:
        ValueError: one line naming the tensor and file: missing, unexpected, or a shape that
            differs from the one the config implies (both shapes given).
    """
    names = checkpoint.names()
    family = family_of(family)
    plan = slots(model, family, _prefix(names, family))
    used = set()
    for slot in plan:
        for i, name in enumerate(slot.names):
            if name not in names:
                raise ValueError(f"{checkpoint.folder}: the checkpoint has no tensor {name!r} "
                                 f"(kzoo variable {slot.variable.path}, expected shape "
                                 f"{slot.hf_shape(i)})")
            handle = checkpoint.file(name)
            if tuple(handle.shape(name)) != slot.hf_shape(i):
                raise ValueError(f"tensor {name!r} in {handle.path} has shape "
                                 f"{tuple(handle.shape(name))} but config.json implies "
                                 f"{slot.hf_shape(i)} (kzoo variable {slot.variable.path})")
            used.add(name)
    head = "lm_head.weight"
    extra = sorted(n for n in names - used if not _BUFFERS.search(n) and n != head)
    if extra:
        raise ValueError(f"{checkpoint.folder}: {len(extra)} tensor(s) have no place in this "
                         f"{family.name} model, e.g. {extra[:3]} in "
                         f"{checkpoint.where[extra[0]]}")
    for slot in plan:
        dtype = slot.variable.dtype
        if len(slot.names) == 1 and _assign_in_chunks(slot, checkpoint.file(slot.names[0])):
            continue
        parts = []
        for name in slot.names:
            array = checkpoint.file(name).get(name)
            parts.append(convert(array.T if slot.transpose else array, dtype))
        slot.variable.assign(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1))
        del parts  # one slot's tensors at a time
    if model.tie_embeddings and head in names - used:
        # Some files store the tied head as well: it must be the embedding, or tying is wrong.
        stored = checkpoint.file(head).get(head)
        embedding = checkpoint.file(plan[0].names[0]).get(plan[0].names[0])
        if stored.shape != embedding.shape or not np.array_equal(stored, embedding):
            raise ValueError(f"config.json ties the output head to the embeddings "
                             f"(tie_word_embeddings) but {head!r} in "
                             f"{checkpoint.where[head]} differs from them")


def export_tensors(model, family: str) -> tuple[dict, dict]:
    """Hugging Face tensors of `model` as `({name: producer}, {name: (shape, dtype)})`.

    Each producer returns one numpy tensor when called, so a writer holds one at a time.

    Args:
        model: CausalLM. the model to export.
        family: str. the family's name (`kzoo.models.families.family_for_model(model).name`).

    Example:
    ```python
    from kzoo.interop.hf_weights import export_tensors
    from kzoo.models import CausalLM
    producers, shapes = export_tensors(CausalLM.from_preset("llama_nano"), "llama")
    shapes["model.layers.0.self_attn.k_proj.weight"][0]   # (32, 64)
    ```
    """
    producers, shapes = {}, {}
    for slot in slots(model, family):
        bounds = np.cumsum((0, *slot.sizes))
        for i, name in enumerate(slot.names):
            def produce(slot=slot, lo=int(bounds[i]), hi=int(bounds[i + 1])):
                value = ops.convert_to_numpy(slot.variable)[..., lo:hi]
                return np.ascontiguousarray(value.T if slot.transpose else value)

            producers[name] = produce
            shapes[name] = (slot.hf_shape(i), slot.variable.dtype)
    return producers, shapes
