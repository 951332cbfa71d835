"""Loading a saved tokenizer folder, kzoo's own format or a Hugging Face one.

`load_tokenizer` reads either: a folder whose `tokenizer.json` names a registered kind
(`kzoo.tokenizers.base`), or a Hugging Face `tokenizer.json` (`kzoo.tokenizers.hf`). It lives
here, above both, because `hf` builds on `base`: in `base` it would import `hf` back.

Example:

>>> import tempfile
>>> from kzoo.tokenizers import ByteTokenizer
>>> folder = ByteTokenizer().save(tempfile.mkdtemp())
>>> load_tokenizer(folder).vocab_size
257
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kzoo.tokenizers.base import CONFIG_FILE, Tokenizer, TokenizerFileError, get, list_tokenizers
from kzoo.tokenizers.hf import from_hf

__all__ = ["load_tokenizer"]


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer saved with `Tokenizer.save` (reads JSON only, never executes code).

    Raises:
        ValueError: one line naming the damaged or missing file of the folder.
    """
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{directory} holds no saved tokenizer: {path} is missing")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(payload, dict) and "kind" not in payload and "model" in payload:
            return from_hf(directory)  # a Hugging Face folder (HFTokenizer.save)
        kind, config = payload["kind"], payload["config"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a kzoo tokenizer file: {error}") from None
    if not isinstance(kind, str) or kind not in list_tokenizers():
        raise ValueError(f"{path}: unknown tokenizer kind {kind!r}; valid kinds: "
                         f"{list_tokenizers()}")
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not describe a {kind} tokenizer: its config must be a "
                         f"mapping, got {type(config).__name__}")
    try:
        tokenizer = get(kind)._from_saved(config, directory)
    except TokenizerFileError:
        raise  # names the damaged model file already
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"{path} does not describe a {kind} tokenizer: {reason}") from None
    if payload.get("vocab_size") not in (None, tokenizer.vocab_size):
        raise ValueError(
            f"{path} says vocab_size={payload['vocab_size']} but the tokenizer it describes "
            f"has {tokenizer.vocab_size} ids"
        )
    return tokenizer
