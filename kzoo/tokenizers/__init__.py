"""Tokenizers: character, byte and byte-level BPE, with one save/load format."""

from kzoo.tokenizers.base import (
    EOT_TOKEN,
    Tokenizer,
    check_vocab,
    get,
    list_tokenizers,
    load_tokenizer,
    train_tokenizer,
)
from kzoo.tokenizers.bpe import BPETokenizer
from kzoo.tokenizers.byte import ByteTokenizer
from kzoo.tokenizers.char import CharTokenizer

__all__ = [
    "EOT_TOKEN",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "check_vocab",
    "get",
    "list_tokenizers",
    "load_tokenizer",
    "train_tokenizer",
]
