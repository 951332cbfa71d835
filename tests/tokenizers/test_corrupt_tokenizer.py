"""A damaged tokenizer folder: `load_tokenizer` raises one ValueError line naming the file."""

import json

import pytest

from kzoo.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer


def saved(tmp_path, kind):
    tok = {"char": lambda: CharTokenizer("abc"),
           "bpe": lambda: BPETokenizer.train(["the cat sat on the mat"] * 20, vocab_size=300)}
    return tok[kind]().save(tmp_path / "tok")


def edit_config(folder, change):
    path = folder / "tokenizer.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return path


CASES = [
    ("char", lambda f: edit_config(f, lambda p: {**p, "kind": "wordpiece"}),
     "tokenizer.json", "unknown tokenizer kind 'wordpiece'"),
    ("char", lambda f: edit_config(f, lambda p: {**p, "config": {"chars": 5}}),
     "tokenizer.json", "does not describe a char tokenizer"),
    ("char", lambda f: edit_config(f, lambda p: {**p, "config": {"chars": "aab"}}),
     "tokenizer.json", "does not describe a char tokenizer: CharTokenizer chars must be"),
    ("char", lambda f: edit_config(f, lambda p: {**p, "config": ["abc"]}),
     "tokenizer.json", "does not describe a char tokenizer"),
    ("char", lambda f: edit_config(f, lambda p: {**p, "config": {"chars": "abc", "x": 1}}),
     "tokenizer.json", "does not describe a char tokenizer"),
    ("char", lambda f: edit_config(f, lambda p: {**p, "kind": "byte", "config": {"x": 1}}),
     "tokenizer.json", "does not describe a byte tokenizer"),
    ("char", lambda f: (f / "tokenizer.json").write_bytes(b"\xff\xfe{"),
     "tokenizer.json", "is not a kzoo tokenizer file"),
    ("char", lambda f: edit_config(f, lambda p: [p]), "tokenizer.json",
     "is not a kzoo tokenizer file"),
    ("bpe", lambda f: (f / "bpe.json").write_text('{"model": '), "bpe.json",
     "is not a readable BPE model file"),
    ("bpe", lambda f: (f / "bpe.json").write_bytes(b"\x00\x01garbage"), "bpe.json",
     "is not a readable BPE model file"),
    ("bpe", lambda f: (f / "bpe.json").unlink(), "bpe.json", "is missing"),
    ("bpe", lambda f: (f / "bpe.json").write_text(
        (f / "bpe.json").read_text().replace("<|endoftext|>", "<|other|>")), "bpe.json",
     "lacks the <|endoftext|> special token"),
]


@pytest.mark.parametrize("kind, damage, file, message", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_damaged_folder_is_one_line_naming_the_file(tmp_path, kind, damage, file, message):
    folder = saved(tmp_path, kind)
    damage(folder)
    with pytest.raises(ValueError) as info:
        load_tokenizer(folder)
    text = str(info.value)
    assert text.startswith(str(folder / file)), text
    assert message in text and "\n" not in text
