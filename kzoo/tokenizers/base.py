"""Tokenizer interface, registry and the on-disk format shared by every kzoo tokenizer.

A tokenizer is saved as a folder holding `tokenizer.json`: `{"kind": ..., "config": {...}}`
plus, for subword tokenizers, the trained model file. Loading reads JSON only, so loading a
tokenizer never executes code from the folder.

Reuse (e.g. from another recipe): `tok = kzoo.tokenizers.load_tokenizer(run_dir /
"tokenizer")` (kzoo.tokenizers.loading, which also reads Hugging Face folders), then
`tok.encode(text)`, `tok.decode(ids)`, `tok.vocab_size`, `tok.eot_id`.

Example:

>>> from kzoo.tokenizers import train_tokenizer
>>> tok = train_tokenizer("char", ["hello world"])
>>> tok.decode(tok.encode("hello"))
'hello'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

EOT_TOKEN = "<|endoftext|>"
CONFIG_FILE = "tokenizer.json"

_REGISTRY: dict[str, type[Tokenizer]] = {}


class TokenizerFileError(ValueError):
    """A file of a saved tokenizer folder is missing or damaged (the message names it)."""


def register(kind: str):
    """Class decorator adding a tokenizer class to the registry under `kind`."""

    def wrap(cls):
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return wrap


def get(kind: str) -> type[Tokenizer]:
    """Return the tokenizer class registered as `kind`; ValueError lists the valid kinds."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {sorted(_REGISTRY)}")
    return _REGISTRY[kind]


def list_tokenizers() -> list[str]:
    """Return the registered tokenizer kinds."""
    return sorted(_REGISTRY)


class Tokenizer:
    """Base class: text <-> integer ids, with one end-of-text id (`eot_id`).

    Subclasses implement `train` (classmethod), `encode`, `decode`, `get_config`, and, when
    they keep a model file, `_save_files` / `_load_files`.
    """

    kind = "base"

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def eot_id(self) -> int:
        raise NotImplementedError

    @property
    def stop_token_ids(self) -> list[int]:
        """The ids that end a generated reply: the end-of-text id here; a Hugging Face
        tokenizer's are the model's end tokens (`eos_token_ids`, e.g. `<|im_end|>` and
        `<|endoftext|>`)."""
        return [self.eot_id]

    @classmethod
    def train(cls, texts: list[str], **options) -> Tokenizer:
        raise NotImplementedError

    def encode(self, text: str) -> np.ndarray:
        """Return the int32 ids of `text` (no end-of-text token added)."""
        raise NotImplementedError

    def encode_documents(self, documents: list[str]) -> np.ndarray:
        """Encode documents and join them, each followed by `eot_id`: int32 (num_tokens,)."""
        pieces = []
        eot = np.array([self.eot_id], np.int32)
        for ids in self.encode_batch(documents):
            pieces.extend([ids, eot])
        return np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    def _save_files(self, directory: Path) -> None:
        """Write model files besides tokenizer.json (none by default)."""

    @classmethod
    def _from_saved(cls, config: dict, directory: Path) -> Tokenizer:
        return cls(**config)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the tokenizer to `directory` (created); return the folder path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_files(directory)
        payload = {"kind": self.kind, "vocab_size": self.vocab_size, "config": self.get_config()}
        tmp = directory / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, directory / CONFIG_FILE)
        return directory


def train_tokenizer(kind: str, texts: list[str], **options) -> Tokenizer:
    """Train a tokenizer of a registered `kind` ("char", "byte", "bpe") on `texts`.

    Args:
        kind: str. registered kind, see `list_tokenizers()`.
        texts: list[str]. training documents.
        **options: kind-specific options, e.g. `vocab_size=2048` for "bpe".
    """
    return get(kind).train(texts, **options)


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int, where: str = "the model") -> None:
    """Raise a ValueError when `tokenizer` has ids past the embedding rows of a model.

    A model may have more rows than the tokenizer has ids: real checkpoints pad their
    vocabulary (Qwen2, SmolLM) to a multiple of 64 or 128, and the extra rows are never
    indexed. A tokenizer with more ids than rows would index past the embeddings.

    Args:
        tokenizer: Tokenizer. the tokenizer.
        model_vocab_size: int. the model's number of embedding rows.
        where: str. the model, as the message names it (a file, say).

    Example:

    >>> from kzoo.tokenizers import ByteTokenizer
    >>> check_vocab(ByteTokenizer(), 320)   # 257 ids, 320 rows: fine
    """
    if tokenizer.vocab_size > model_vocab_size:
        raise ValueError(
            f"tokenizer ({tokenizer.kind}, vocab_size={tokenizer.vocab_size}) does not match "
            f"{where} (vocab_size={model_vocab_size}): its ids would index past the model's "
            f"{model_vocab_size} embedding rows; use the model's own tokenizer"
        )
