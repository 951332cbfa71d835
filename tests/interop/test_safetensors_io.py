"""kzoo's safetensors reader and writer agree with the `safetensors` package, bfloat16 included
(which the package's numpy reader cannot return), whole tensors or a few rows at a time."""

import ml_dtypes
import numpy as np
import pytest

from kzoo.interop.safetensors_io import SafetensorsFile, convert, write_safetensors

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _tensors():
    generator = torch.Generator().manual_seed(0)
    return {
        "bf16": torch.randn(3, 5, generator=generator).bfloat16(),
        "f16": torch.randn(4, generator=generator).half(),
        "f32": torch.randn(2, 3, 2, generator=generator),
        "i64": torch.arange(6).reshape(2, 3),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 4),
    }


def test_reads_what_safetensors_writes(tmp_path):
    tensors = _tensors()
    safetensors_torch.save_file(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
    file = SafetensorsFile(tmp_path / "t.safetensors")
    assert sorted(file.keys()) == sorted(tensors) and file.metadata == {"format": "pt"}
    for name, tensor in tensors.items():
        array = file.get(name)
        assert array.shape == tuple(tensor.shape)
        np.testing.assert_array_equal(np.asarray(array, "float64"),
                                      tensor.double().numpy())
        if array.ndim and len(array) > 1:  # a slice of rows reads just those rows
            np.testing.assert_array_equal(np.asarray(file.get(name, rows=(1, 2)), "float64"),
                                          tensor[1:2].double().numpy())
    assert file.dtype("bf16") == np.dtype(ml_dtypes.bfloat16)
    assert convert(file.get("bf16"), "float32").dtype == np.float32


def test_safetensors_reads_what_kzoo_writes(tmp_path):
    tensors = {name: t.float().numpy().astype(ml_dtypes.bfloat16) if name == "bf16"
               else t.numpy() for name, t in _tensors().items()}
    shapes = {name: (a.shape, a.dtype) for name, a in tensors.items()}
    producers = {name: (lambda a=a: a) for name, a in tensors.items()}  # one at a time
    write_safetensors(tmp_path / "k.safetensors", producers, {"format": "pt"}, shapes)
    loaded = safetensors_torch.load_file(tmp_path / "k.safetensors")
    assert loaded["bf16"].dtype == torch.bfloat16
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name].double().numpy(),
                                      np.asarray(array, "float64"))
    assert not (tmp_path / "k.safetensors.tmp").exists()


def test_writer_refuses_a_tensor_that_does_not_match_its_header(tmp_path):
    with pytest.raises(ValueError, match=r"tensor 'w' is float32 \[3\]; its header says F32 "
                       r"\[2\]"):
        write_safetensors(tmp_path / "x.safetensors", {"w": lambda: np.zeros(3, "float32")},
                          shapes={"w": ((2,), "float32")})


_Q8 = b'{"w": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}'  # an unknown dtype


@pytest.mark.parametrize("data, match", [
    (b"", r"header length 0 does not fit a 0-byte file"),
    ((5).to_bytes(8, "little") + b"[1,2]", r"its header is not a JSON object"),
    (len(_Q8).to_bytes(8, "little") + _Q8 + b"x", r"tensor 'w' has a bad header entry"),
    ((3).to_bytes(8, "little") + b"{x}", r"its header is not JSON"),
])
def test_damaged_files_are_named(tmp_path, data, match):
    (tmp_path / "bad.safetensors").write_bytes(data)
    with pytest.raises(ValueError, match=match) as info:
        SafetensorsFile(tmp_path / "bad.safetensors")
    assert "bad.safetensors" in str(info.value)
