"""safetensors files read and written one tensor at a time, with no torch and no pickle.

The format (https://github.com/huggingface/safetensors) is 8 bytes of little-endian header length,
a JSON header `{name: {"dtype", "shape", "data_offsets"}}`, then the raw little-endian bytes.
Reading takes one tensor at a time into a fresh array, so a checkpoint is never held twice:
the loader converts each tensor into the model's variable and lets it go. The `safetensors`
package's numpy reader cannot return bfloat16 (numpy has no such type) and its torch reader
would make torch a dependency, so the (tiny, fully specified) header is parsed here and bfloat16
comes back as `ml_dtypes.bfloat16`, the type TensorFlow and JAX use.

Example:
```python
import numpy as np
from kzoo.interop.safetensors_io import SafetensorsFile, write_safetensors
write_safetensors("t.safetensors", {"w": np.ones((2, 3), "float32")})
print(SafetensorsFile("t.safetensors").get("w").shape)   # (2, 3)
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
# A header is a few hundred bytes per tensor; anything this large is a damaged file.
_MAX_HEADER = 100 * 1024 * 1024


def _fail(path, reason):
    raise ValueError(f"{path} is not a readable safetensors file: {reason}")


class SafetensorsFile:
    """One safetensors file: its tensor names, shapes and dtypes, and zero-copy reads.

    Args:
        path: str | PathLike. the `.safetensors` file.

    Raises:
        ValueError: one line naming the file when it is missing, truncated or its header is
            damaged (offsets outside the file, sizes that do not match shapes, unknown dtypes).

    Example:
    ```python
    import numpy as np
    from kzoo.interop.safetensors_io import SafetensorsFile, write_safetensors
    write_safetensors("w.safetensors", {"w": np.ones((2, 3), "float32")})
    f = SafetensorsFile("w.safetensors")
    {name: f.shape(name) for name in f.keys()}   # {'w': (2, 3)}
    ```
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                if size < 8 or not 2 <= length <= min(_MAX_HEADER, size - 8):
                    _fail(self.path, f"header length {length} does not fit a {size}-byte file")
                header = json.loads(handle.read(length))
        except OSError as error:
            raise ValueError(f"{self.path} cannot be read ({error.strerror or error})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            _fail(self.path, f"its header is not JSON ({error})")
        if not isinstance(header, dict):
            _fail(self.path, "its header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._start = 8 + length
        data_size = size - self._start
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            try:
                dtype = _DTYPES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                _fail(self.path, f"tensor {name!r} has a bad header entry {entry!r}")
            if not 0 <= begin <= end <= data_size or end - begin != (
                    int(np.prod(shape)) * dtype.itemsize):
                _fail(self.path, f"tensor {name!r} ({entry['dtype']} {list(shape)}) has data "
                      f"offsets [{begin}, {end}) that do not fit its size or the file")
            self._entries[name] = (dtype, shape, begin, end)

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Tensor `name` in its stored dtype, read into a fresh array; `rows=(lo, hi)` reads
        only `tensor[lo:hi]` (rows are contiguous in the file).

        A read, not a memory map: mapped pages stay in the process's resident memory until
        the whole file is unmapped, so loading through a map costs a second copy of the
        checkpoint at its peak; a read costs one tensor (or a few rows) at a time.
        """
        dtype, shape, begin, end = self._entries[name]
        row = int(np.prod(shape[1:])) if shape else 1
        lo, hi = (0, shape[0] if shape else 1) if rows is None else rows
        count = (hi - lo) * row
        array = np.fromfile(self.path, dtype=dtype, count=count,
                            offset=self._start + begin + lo * row * dtype.itemsize)
        if array.size != count:
            _fail(self.path, f"tensor {name!r} is cut short ({array.size} of {count} values)")
        return array.reshape(shape if rows is None else (hi - lo, *shape[1:]))


def convert(array: np.ndarray, dtype) -> np.ndarray:
    """`array` as `dtype` ("float32", "bfloat16", ...): the view itself when it already is."""
    target = np.dtype(ml_dtypes.bfloat16) if str(dtype) == "bfloat16" else np.dtype(dtype)
    return array if array.dtype == target else array.astype(target)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray | Callable],
                      metadata: dict | None = None, shapes: Mapping | None = None) -> Path:
    """Write `tensors` to `path`, one at a time (a tensor may be a function producing it).

    With functions, `shapes` gives `{name: (shape, dtype)}` up front, so only one tensor is in
    memory at a time: the header, which holds every offset, is written first. The file is
    written next to `path` and renamed, so a crash never leaves half a checkpoint.

    Args:
        path: str | PathLike. the file to write.
        tensors: mapping. name -> numpy array, or a no-argument function returning one.
        metadata: dict or None. string metadata (`{"format": "pt"}` for transformers).
        shapes: mapping or None. name -> (shape, dtype), required for function values.

    Example:
    ```python
    import numpy as np
    from kzoo.interop.safetensors_io import write_safetensors
    write_safetensors("t.safetensors", {"b": np.zeros(3, "float16")}, {"format": "pt"})
    ```
    """
    path = Path(path)
    layout, offset = {}, 0
    for name, value in tensors.items():
        if callable(value):
            shape, dtype = shapes[name]
        else:
            shape, dtype = value.shape, value.dtype
        dtype = np.dtype(ml_dtypes.bfloat16) if str(dtype) == "bfloat16" else np.dtype(dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        layout[name] = {"dtype": _NAMES[dtype], "shape": [int(d) for d in shape],
                        "data_offsets": [offset, offset + size]}
        offset += size
    header = dict(layout)
    if metadata:
        header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}, **header}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for name, value in tensors.items():
            array = value() if callable(value) else value
            spec = layout[name]
            if list(array.shape) != spec["shape"] or _NAMES[array.dtype] != spec["dtype"]:
                raise ValueError(f"tensor {name!r} is {array.dtype} {list(array.shape)}; "
                                 f"its header says {spec['dtype']} {spec['shape']}")
            handle.write(np.ascontiguousarray(array).tobytes())
    os.replace(tmp, path)
    return path
