"""Byte-level tokenizer: the 256 UTF-8 byte values, then EOT (id 256). Needs no training.

Example:

>>> from kzoo.tokenizers import ByteTokenizer
>>> tok = ByteTokenizer()
>>> tok.encode("é").tolist(), tok.decode(tok.encode("héllo"))
([195, 169], 'héllo')
"""

from __future__ import annotations

import numpy as np

from kzoo.tokenizers.base import EOT_TOKEN, Tokenizer, register


@register("byte")
class ByteTokenizer(Tokenizer):
    """Ids 0..255 are bytes of the UTF-8 encoding; id 256 is the end-of-text token."""

    @classmethod
    def train(cls, texts: list[str], **options) -> ByteTokenizer:
        if options:
            raise ValueError(f"byte tokenizer takes no options, got {sorted(options)}")
        return cls()

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eot_id(self) -> int:
        return 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > 256):
            raise ValueError(f"ids must lie in [0, 256] for the byte tokenizer, got {ids.max()}")
        out, chunk = [], []
        for i in ids.tolist():
            if i == 256:
                out.append(bytes(chunk).decode("utf-8", errors="replace") + EOT_TOKEN)
                chunk = []
            else:
                chunk.append(i)
        out.append(bytes(chunk).decode("utf-8", errors="replace"))
        return "".join(out)

    def get_config(self) -> dict:
        return {}
