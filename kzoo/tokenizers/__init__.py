"""Tokenizers: character, byte and byte-level BPE, with one save/load format, and
Hugging Face tokenizer folders (`from_hf`) with their chat templates."""

from kzoo.tokenizers.base import (
    EOT_TOKEN,
    Tokenizer,
    check_vocab,
    get,
    list_tokenizers,
    train_tokenizer,
)
from kzoo.tokenizers.bpe import BPETokenizer
from kzoo.tokenizers.byte import ByteTokenizer
from kzoo.tokenizers.char import CharTokenizer
from kzoo.tokenizers.hf import HFTokenizer, from_hf
from kzoo.tokenizers.loading import load_tokenizer

__all__ = [
    "EOT_TOKEN",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "check_vocab",
    "from_hf",
    "get",
    "list_tokenizers",
    "load_tokenizer",
    "train_tokenizer",
]
