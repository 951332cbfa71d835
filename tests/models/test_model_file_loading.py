"""`load_model_file`: every broken `.keras` file is one ValueError line naming the file."""

import json
import zipfile

import pytest

from kzoo.models import CausalLM
from kzoo.models.loading import load_model_file


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.keras"
    CausalLM.from_preset("gpt_nano", vocab_size=20, max_sequence_length=16).save(path)
    return path


def rewrite(good, path, change=None, drop=()):
    """Copy the archive `good` to `path`, passing config.json through `change`."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as out:
        for name in src.namelist():
            if name in drop:
                continue
            data = src.read(name)
            if name == "config.json" and change:
                data = json.dumps(change(json.loads(data))).encode()
            out.writestr(name, data)
    return path


def unknown_class(config):
    config.update(class_name="NoSuchModel", registered_name="kzoo>NoSuchModel")
    return config


def crafted_module(config):  # a file that asks for os.system: safe mode never imports it
    config.update(module="os", class_name="system", registered_name=None)
    return config


def test_a_good_file_loads(good):
    model = load_model_file(good, compile=False, expect=CausalLM)
    assert isinstance(model, CausalLM) and model.vocab_size == 20


@pytest.mark.parametrize("make, message", [
    (lambda good, p: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
     "is truncated or is not a .keras file"),
    (lambda good, p: p.write_bytes(b""), "is truncated or is not a .keras file"),
    (lambda good, p: rewrite(good, p, unknown_class),
     "names a class that does not exist here: 'NoSuchModel'"),
    (lambda good, p: rewrite(good, p, crafted_module),
     "names a class that does not exist here: 'system'"),
    (lambda good, p: rewrite(good, p, drop=("config.json",)), "holds no config.json"),
    (lambda good, p: rewrite(good, p, drop=("model.weights.h5",)),
     "could not be loaded as a Keras model: Expected a model.weights.h5"),
    (lambda good, p: rewrite(good, p, lambda c: [1]), "its config.json names no class"),
    (lambda good, p: rewrite(good, p, lambda c: {**c, "config": {**c["config"],
                                                                 "vocab_size": "x"}}),
     "could not be loaded as a Keras model: `vocab_size` must be a positive integer"),
])
def test_broken_files_are_one_line_naming_the_file(good, tmp_path, make, message):
    path = tmp_path / "broken.keras"
    make(good, path)
    with pytest.raises(ValueError) as info:
        load_model_file(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_missing_wrong_suffix_and_wrong_class(good, tmp_path):
    with pytest.raises(ValueError, match=r"model file .*missing.keras does not exist"):
        load_model_file(tmp_path / "missing.keras")
    (tmp_path / "m.h5").write_bytes(good.read_bytes())
    with pytest.raises(ValueError, match=r"m.h5: expected a .keras model file"):
        load_model_file(tmp_path / "m.h5")
    with pytest.raises(ValueError, match=r"holds a CausalLM, not a RewardModel"):
        from kzoo.alignment.reward import RewardModel

        load_model_file(good, expect=RewardModel)
