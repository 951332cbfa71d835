"""Character-level tokenizer: one id per Unicode character seen in training, plus EOT and UNK.

Example:

>>> from kzoo.tokenizers import CharTokenizer
>>> tok = CharTokenizer.train(["to be or not"])
>>> tok.decode(tok.encode("not to be"))
'not to be'
"""

from __future__ import annotations

import numpy as np

from kzoo.tokenizers.base import EOT_TOKEN, Tokenizer, register

UNK_TOKEN = "<|unk|>"


@register("char")
class CharTokenizer(Tokenizer):
    """Maps each character to an id; ids 0..n-1 are the sorted characters, then EOT, then UNK.

    Args:
        chars: str. the vocabulary characters, in id order.
    """

    def __init__(self, chars: str):
        if not isinstance(chars, str):
            raise ValueError(f"CharTokenizer chars must be a string, got {type(chars).__name__}")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer chars must be distinct")
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}
        # Dense code-point lookup table: encoding 1 MB is one numpy take, not a Python loop.
        self._table_size = max((ord(c) for c in chars), default=0) + 1
        self._table = np.full(self._table_size, self.unk_id, np.int32)
        for c, i in self._index.items():
            self._table[ord(c)] = i

    @classmethod
    def train(cls, texts: list[str], **options) -> CharTokenizer:
        if options:
            raise ValueError(f"char tokenizer takes no options, got {sorted(options)}")
        return cls("".join(sorted(set().union(*map(set, texts)))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 2

    @property
    def eot_id(self) -> int:
        return len(self.chars)

    @property
    def unk_id(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        inside = codes < self._table_size
        ids = np.full(codes.shape, self.unk_id, np.int32)
        ids[inside] = self._table[codes[inside]]
        return ids

    def decode(self, ids) -> str:
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i < len(self.chars):
                out.append(self.chars[i])
            elif i == self.eot_id:
                out.append(EOT_TOKEN)
            elif i == self.unk_id:
                out.append("\ufffd")
            else:
                raise ValueError(f"id {i} is outside the char vocabulary (size {self.vocab_size})")
        return "".join(out)

    def get_config(self) -> dict:
        return {"chars": self.chars}
