"""Resolve what a user names as a model: a `.keras` file, a kzoo run folder, a Hugging Face
folder or a keras-hub preset folder, and the tokenizer that came with it.

What each form is recognized by (checked in this order):

- a `.keras` file: written by `model.save(...)`, loaded in Keras safe mode;
- a kzoo run folder: `kzoo-run.json`, `model.keras`, `config.yaml` or `tokenizer/` inside; its
  model file (default `model.keras`) and its `tokenizer/`;
- a keras-hub preset folder: `config.json` naming a keras-hub backbone some model family reads
  (`kzoo.models.families.keras_hub_backbones()`: GPT2Backbone, LlamaBackbone, ...),
  `model.weights.h5` (written by `save_to_preset`);
- a Hugging Face folder: `config.json` with a `model_type`, and `model.safetensors` (or shards
  with `model.safetensors.index.json`).

Nothing read here executes code from the folder: `.keras` files load in safe mode, Hugging
Face weights are safetensors (pickle files are refused by name), a keras-hub config must name
one of the three backbone classes before keras-hub is asked to build it, and tokenizers are
JSON and text files.

Example:
```python
from kzoo.models.sources import load_model_and_tokenizer
model, tokenizer = load_model_and_tokenizer("SmolLM2-135M-Instruct")   # or runs/sft, x.keras
```
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from kzoo._files import read_json_object
from kzoo.models.families import keras_hub_backbones

RUN_SIGNS = ("kzoo-run.json", "model.keras", "config.yaml", "tokenizer")
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
KERAS_HUB_BACKBONES = keras_hub_backbones()
ACCEPTED = ("a .keras model file; a kzoo run folder (kzoo-run.json, model.keras, tokenizer/); "
            "a Hugging Face folder (config.json with model.safetensors or "
            "model.safetensors.index.json); a keras-hub preset folder (config.json naming "
            f"{'/'.join(KERAS_HUB_BACKBONES)}, metadata.json, model.weights.h5)")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model a user named, recognized (see `find_model_source`).

    Args:
        kind: str. "keras", "run", "hf" or "keras_hub".
        path: Path. what the user named.
        model_path: Path. the `.keras` file (kinds "keras", "run") or the folder.

    Example:
    ```python
    source = find_model_source("runs/sft")   # ModelSource(kind='run', ...)
    model, tokenizer = source.load_model(), source.load_tokenizer()
    ```
    """

    kind: str
    path: Path
    model_path: Path

    def load_model(self, compile: bool = False, dtype=None):
        """The `CausalLM` (safe mode for `.keras`; `dtype` applies to "hf" and "keras_hub").

        Args:
            compile: bool. restore a `.keras` file's `compile()` settings.
            dtype: str or None. dtype policy of a converted model; None: Keras' default.
        """
        from kzoo.models import CausalLM
        from kzoo.models.loading import load_model_file

        if self.kind in ("keras", "run"):
            return load_model_file(self.model_path, compile=compile, expect=CausalLM)
        if self.kind == "hf":
            return CausalLM.from_hf(self.model_path, dtype=dtype)
        return CausalLM.from_keras_hub(str(self.model_path), dtype=dtype)

    def load_tokenizer(self, hint: str = "set model.tokenizer to byte or a tokenizer folder"):
        """The tokenizer that came with the model (what `tokenizer: auto` means).

        Args:
            hint: str. what the user can do instead, ended to the one-line error when the
                source has no tokenizer kzoo can read.

        Raises:
            ValueError: one line naming the source and what is missing.
        """
        from kzoo.tokenizers import from_hf, load_tokenizer

        if self.kind in ("keras", "run"):
            folder = self.model_path.parent / "tokenizer"
            if not folder.is_dir():
                raise ValueError(f"{self.model_path} has no tokenizer/ folder beside it to go "
                                 f"with it; {hint}")
            return load_tokenizer(folder)
        if self.kind == "hf":
            if not (self.path / "tokenizer.json").is_file():
                raise ValueError(f"{self.path / 'tokenizer.json'} is missing, so the Hugging "
                                 f"Face folder brings no tokenizer kzoo reads; {hint}")
            return from_hf(self.path)
        return keras_hub_tokenizer(self.path, hint)


def _is_keras_hub(config: dict) -> bool:
    names = (str(config.get("registered_name") or ""), str(config.get("module") or ""))
    return any(n.startswith("keras_hub") for n in names)


def _check_keras_hub(folder: Path, config: dict) -> None:
    name = str(config.get("class_name"))
    if name not in KERAS_HUB_BACKBONES:
        raise ValueError(f"{folder / 'config.json'} names keras-hub class {name!r}; supported "
                         f"keras-hub presets: {', '.join(KERAS_HUB_BACKBONES)}")
    for file in ("metadata.json", "model.weights.h5"):
        if not (folder / file).is_file():
            raise ValueError(f"{folder} is a keras-hub preset folder without {file} (write it "
                             "with model.save_to_preset(folder))")


def _check_hf(folder: Path) -> None:
    if any((folder / name).is_file() for name in HF_WEIGHTS):
        return
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(
        p.name for p in folder.glob("*.pt*"))
    extra = (f"; its {pickles} are pickle files kzoo never loads (they can run code)"
             if pickles else "")
    raise ValueError(f"{folder} has config.json but no weights: neither {HF_WEIGHTS[0]} nor "
                     f"{HF_WEIGHTS[1]}{extra}")


def find_model_source(path: str | os.PathLike, model_file: str = "model.keras",
                      what: str = "model.init_from") -> ModelSource:
    """Recognize what `path` is; nothing is loaded yet.

    Args:
        path: str | PathLike. a `.keras` file, run folder, Hugging Face or keras-hub folder.
        model_file: str. the model file inside a run folder.
        what: str. how the user named it, for the error messages ("model.init_from", "RUN_DIR").

    Returns:
        ModelSource. its kind and where its model is.

    Raises:
        ValueError: one line naming the path: missing, a run folder without its model file, a
            folder without weights, or none of the accepted forms (listed).

    Example:
    ```python
    find_model_source("runs/sft").kind                 # 'run'
    find_model_source("SmolLM2-135M-Instruct").kind    # 'hf'
    ```
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist; expected {ACCEPTED}")
    if path.is_file():
        if path.suffix == ".keras":
            return ModelSource("keras", path, path)
        raise ValueError(f"{what} {path} is a file but not a .keras model; expected {ACCEPTED}")
    if any((path / sign).exists() for sign in (*RUN_SIGNS, model_file)):
        model = path / model_file
        if not model.is_file():
            raise ValueError(f"{model} is missing: the run in {path} saved no {model_file} "
                             "(train first, or name another model file)")
        return ModelSource("run", path, model)
    if (path / "config.json").is_file():
        config = read_json_object(path / "config.json")
        if _is_keras_hub(config):
            _check_keras_hub(path, config)
            return ModelSource("keras_hub", path, path)
        if "model_type" in config:
            _check_hf(path)
            return ModelSource("hf", path, path)
        raise ValueError(f"{path / 'config.json'} is neither a Hugging Face config (no "
                         f"model_type) nor a keras-hub preset's; expected {ACCEPTED}")
    raise ValueError(f"{what} {path} is a folder kzoo does not recognize as a model; "
                     f"expected {ACCEPTED}")


def keras_hub_tokenizer(folder: str | os.PathLike,
                        hint: str = "set model.tokenizer to byte or a tokenizer folder"):
    """The tokenizer of a keras-hub preset folder, when kzoo can read it: a GPT2Tokenizer
    (`assets/tokenizer/vocabulary.json` and `merges.txt`) becomes an `HFTokenizer` with the
    same byte-level BPE.

    Args:
        folder: str | PathLike. the preset folder.
        hint: str. what to do instead, ended to the error.

    Raises:
        ValueError: one line when the preset has no tokenizer or one kzoo cannot read (a
            SentencePiece model, say).

    Example:
    ```python
    tok = keras_hub_tokenizer("gpt2_preset")
    tok.encode("hello world")
    ```
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from kzoo.tokenizers import EOT_TOKEN, HFTokenizer

    folder = Path(folder)
    config_file = folder / "tokenizer.json"
    if not config_file.is_file():
        raise ValueError(f"the keras-hub preset {folder} holds no tokenizer ({config_file} is "
                         f"missing); {hint}")
    config = read_json_object(config_file)
    name = config.get("class_name")
    assets = folder / "assets" / "tokenizer"
    vocab_file, merges_file = assets / "vocabulary.json", assets / "merges.txt"
    if name != "GPT2Tokenizer" or not (vocab_file.is_file() and merges_file.is_file()):
        raise ValueError(f"kzoo cannot read the keras-hub tokenizer of {folder} ({name}; kzoo "
                         f"reads GPT2Tokenizer assets only); {hint}")
    vocab = read_json_object(vocab_file)
    merges = []
    for number, line in enumerate(merges_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{merges_file} line {number}: expected two tokens separated by "
                             f"one space, got {line!r}")
        merges.append((parts[0], parts[1]))
    try:
        bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    except Exception as error:  # `tokenizers` raises a bare Exception on bad merges
        raise ValueError(f"{vocab_file} and {merges_file} do not make a BPE tokenizer: "
                         f"{' '.join(str(error).split())[:200]}") from None
    # keras-hub's GPT2Tokenizer: GPT-2's split pattern, no prefix space, byte-level alphabet.
    prefix = bool(config.get("config", {}).get("add_prefix_space", False))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    bpe.decoder = decoders.ByteLevel()
    if EOT_TOKEN not in vocab:
        raise ValueError(f"{vocab_file} has no {EOT_TOKEN!r} token (GPT2Tokenizer's end)")
    return HFTokenizer(bpe, {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN,
                             "unk_token": EOT_TOKEN})


def resolve_tokenizer(spec: str, source: ModelSource | None, where: str = "model.tokenizer"):
    """The tokenizer a config names: "auto" (the model's own; "byte" without a model),
    "byte", or a saved tokenizer folder (kzoo's or a Hugging Face layout).

    Args:
        spec: str. "auto", "byte" or a folder.
        source: ModelSource or None. the model it goes with (None: a model built from a
            preset).
        where: str. the config key, for the error messages.

    Example:
    ```python
    resolve_tokenizer("auto", None).kind   # 'byte'
    ```
    """
    from kzoo.tokenizers import ByteTokenizer, load_tokenizer

    if spec == "byte" or (spec == "auto" and source is None):
        return ByteTokenizer()
    if spec == "auto":
        return source.load_tokenizer(f"set {where} to byte or a tokenizer folder")
    if not Path(spec).is_dir():
        raise ValueError(f"{where}={spec!r} is not a folder; expected auto, byte or a saved "
                         "tokenizer folder")
    return load_tokenizer(spec)


def load_model_and_tokenizer(path: str | os.PathLike, tokenizer: str = "auto",
                             model_file: str = "model.keras", what: str = "model.init_from",
                             where: str = "model.tokenizer", compile: bool = False):
    """The `CausalLM` at `path` and its tokenizer, checked to fit each other.

    Args:
        path: str | PathLike. any form `find_model_source` accepts.
        tokenizer: str. "auto" (the one that came with the model), "byte" or a folder.
        model_file: str. the model file inside a run folder.
        what: str. how the user named the model, for the error messages.
        where: str. how the user named the tokenizer, for the error messages.
        compile: bool. restore a `.keras` file's `compile()` settings.

    Returns:
        tuple. `(model, tokenizer)`.

    Raises:
        ValueError: one line: a path `find_model_source` refuses, no readable tokenizer, or a
            tokenizer with more ids than the model has embedding rows.

    Example:
    ```python
    model, tok = load_model_and_tokenizer("runs/sft")   # runs/sft/model.keras, runs/sft/tokenizer
    ```
    """
    from kzoo.tokenizers import check_vocab

    source = find_model_source(path, model_file, what)
    tok = resolve_tokenizer(tokenizer, source, where)  # before the model: the cheaper check
    model = source.load_model(compile=compile)
    check_vocab(tok, model.vocab_size, where=str(source.model_path))
    return model, tok

