"""Char, byte and BPE tokenizers: round trips, EOT, save/load, registry, mismatches."""

import json

import numpy as np
import pytest

from kzoo.data import load_documents
from kzoo.tokenizers import (
    EOT_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    check_vocab,
    get,
    list_tokenizers,
    load_tokenizer,
    train_tokenizer,
)

TEXT = ["First Citizen:\nBefore we proceed any further, hear me speak.", "Ünïcödé ✓ ok"]


@pytest.fixture(scope="module")
def pydocs():
    return load_documents("pydocs")


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_round_trip_and_save_load(kind, tmp_path, pydocs):
    options = {"vocab_size": 400} if kind == "bpe" else {}
    tok = train_tokenizer(kind, pydocs[:20] + TEXT, **options)
    for text in TEXT:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.max() < tok.vocab_size
        assert tok.eot_id not in ids.tolist()
        assert tok.decode(ids) == text
    loaded = load_tokenizer(tok.save(tmp_path / "tok"))
    assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(loaded.encode(TEXT[0]), tok.encode(TEXT[0]))
    assert tok.decode([tok.eot_id]) == EOT_TOKEN


def test_char_vocabulary_and_unknown():
    tok = CharTokenizer.train(["abca"])
    assert tok.vocab_size == 5 and tok.eot_id == 3 and tok.unk_id == 4
    assert tok.encode("abz").tolist() == [0, 1, 4]


def test_byte_tokenizer_is_fixed():
    tok = ByteTokenizer()
    assert tok.vocab_size == 257 and tok.eot_id == 256
    assert tok.encode("é").tolist() == [195, 169]


def test_bpe_compresses_english(pydocs):
    tok = BPETokenizer.train(pydocs, vocab_size=1024)
    text = "\n".join(pydocs[:10])
    assert tok.vocab_size == 1024
    assert len(tok.encode(text)) < 0.45 * len(text.encode("utf-8"))


def test_registry_lists_valid_kinds():
    assert list_tokenizers() == ["bpe", "byte", "char"]
    with pytest.raises(ValueError, match=r"valid kinds: \['bpe', 'byte', 'char'\]"):
        get("wordpiece")


def test_bad_saved_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="holds no saved tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "magic", "config": {}}))
    with pytest.raises(ValueError, match="unknown tokenizer kind 'magic'"):
        load_tokenizer(tmp_path)


def test_vocab_mismatch_is_reported():
    with pytest.raises(ValueError, match=r"vocab_size=257\) does not match the model"):
        check_vocab(ByteTokenizer(), 256)
    check_vocab(ByteTokenizer(), 257)


def test_bpe_options_are_checked():
    with pytest.raises(ValueError, match=">= 257"):
        BPETokenizer.train(TEXT, vocab_size=100)
    with pytest.raises(ValueError, match="takes no options"):
        train_tokenizer("char", TEXT, vocab_size=10)
