"""Byte, char and base tokenizers at their edges (ids at the vocabulary bounds, invalid UTF-8,
EOT inside a sequence, unknown characters, the saved format), against Python's own codecs."""

import json

import numpy as np
import pytest

from kzoo.tokenizers import EOT_TOKEN, BPETokenizer, ByteTokenizer, CharTokenizer, load_tokenizer
from kzoo.tokenizers.base import CONFIG_FILE, Tokenizer, check_vocab

TEXTS = ["héllo wörld ✓", "", "a\nb\tc", "日本語 🙂"]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_encode_is_pythons_utf8(text):
    ids = ByteTokenizer().encode(text)
    assert ids.dtype == np.int32 and ids.tolist() == list(text.encode("utf-8"))


def test_byte_decode_splits_at_eot_and_replaces_bad_bytes_like_python():
    tok = ByteTokenizer()
    broken = [0xE2, 0x9C]  # the first two bytes of "✓": invalid alone
    ids = [*b"ab", *broken, 256, *"é".encode(), 256, *broken]
    want = (bytes([*b"ab", *broken]).decode("utf-8", errors="replace") + EOT_TOKEN + "é"
            + EOT_TOKEN + bytes(broken).decode("utf-8", errors="replace"))
    assert tok.decode(ids) == want
    assert tok.decode(np.array([ids, ids]).reshape(2, -1)) == want + want  # any shape
    assert tok.decode([]) == "" and tok.decode([256, 256]) == EOT_TOKEN * 2
    assert tok.decode([0, 255])[-1] == "\ufffd" and tok.decode([0]) == "\x00"


@pytest.mark.parametrize("bad", [[-1], [257], [0, 300]])
def test_byte_decode_refuses_ids_outside_the_vocabulary(bad):
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 256\] for the byte tokenizer"):
        ByteTokenizer().decode(bad)


def test_byte_train_takes_no_options_and_saves_an_empty_config(tmp_path):
    assert isinstance(ByteTokenizer.train(["x"]), ByteTokenizer)
    with pytest.raises(ValueError, match=r"byte tokenizer takes no options, got \['merges'\]"):
        ByteTokenizer.train(["x"], merges=3)
    saved = json.loads((ByteTokenizer().save(tmp_path) / CONFIG_FILE).read_text("utf-8"))
    assert saved == {"kind": "byte", "vocab_size": 257, "config": {}}
    assert ByteTokenizer().stop_token_ids == [256]


def test_char_ids_follow_the_given_order_then_eot_then_unk():
    tok = CharTokenizer("zaé")
    assert (tok.vocab_size, tok.eot_id, tok.unk_id) == (5, 3, 4)
    # "b" lies inside the code-point table but is not a vocabulary character; "✓" past it
    assert tok.encode("azébé✓").tolist() == [1, 0, 2, 4, 2, 4]
    assert tok.decode([1, 0, 3, 2, 4]) == "az" + EOT_TOKEN + "é\ufffd"
    assert tok.decode(np.array([[0], [1]])) == "za"
    # the code point just past the largest vocabulary character is unknown too
    assert CharTokenizer("ab").encode("c").tolist() == [3]
    with pytest.raises(ValueError, match=r"id 5 is outside the char vocabulary \(size 5\)"):
        tok.decode([0, 5])


def test_char_with_no_characters_maps_everything_to_unk():
    tok = CharTokenizer("")
    assert (tok.vocab_size, tok.eot_id, tok.unk_id) == (2, 0, 1)
    assert tok.encode("\x00ab").tolist() == [1, 1, 1]
    assert tok.decode([0, 1]) == EOT_TOKEN + "\ufffd"


def test_char_train_sorts_the_characters_it_saw(tmp_path):
    tok = CharTokenizer.train(["cab", "bd"])
    assert tok.chars == "abcd" and tok.get_config() == {"chars": "abcd"}
    with pytest.raises(ValueError, match=r"char tokenizer takes no options, got \['a', 'b'\]"):
        CharTokenizer.train(["x"], b=1, a=2)
    loaded = load_tokenizer(tok.save(tmp_path / "t"))
    assert loaded.chars == "abcd" and loaded.encode("dcba").tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize("chars, match", [
    (["a", "b"], "CharTokenizer chars must be a string, got list"),
    ("abca", "CharTokenizer chars must be distinct"),
])
def test_char_refuses_bad_vocabularies(chars, match):
    with pytest.raises(ValueError, match=match):
        CharTokenizer(chars)


def test_encode_documents_ends_each_document_with_eot():
    tok = CharTokenizer("abc")
    ids = tok.encode_documents(["ab", "", "c"])
    assert ids.dtype == np.int32 and ids.tolist() == [0, 1, 3, 3, 2, 3]
    empty = tok.encode_documents([])
    assert empty.dtype == np.int32 and empty.shape == (0,)
    assert [t.tolist() for t in tok.encode_batch(["b", "ca"])] == [[1], [2, 0]]


def test_save_writes_the_config_atomically(tmp_path):
    tok = CharTokenizer("ab")
    folder = tok.save(tmp_path / "deep" / "er")
    assert folder == tmp_path / "deep" / "er"
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE]  # no .tmp left behind
    text = (folder / CONFIG_FILE).read_text("utf-8")
    assert json.loads(text) == {"kind": "char", "vocab_size": 4, "config": {"chars": "ab"}}
    CharTokenizer("é✓").save(tmp_path / "u")
    assert "é✓" in (tmp_path / "u" / CONFIG_FILE).read_text("utf-8")  # not \\u escapes
    tok.save(folder)  # again, into the existing folder


def test_base_class_leaves_the_interface_to_subclasses():
    base = Tokenizer()
    assert base.kind == "base"
    for call in (lambda: base.vocab_size, lambda: base.eot_id, lambda: base.encode("a"),
                 lambda: base.decode([0]), lambda: base.get_config(),
                 lambda: Tokenizer.train(["a"])):
        with pytest.raises(NotImplementedError):
            call()


def test_check_vocab_message_names_the_model_and_rows():
    check_vocab(ByteTokenizer(), 320)  # more rows than ids: fine (padded vocabularies)
    with pytest.raises(ValueError, match=r"^tokenizer \(byte, vocab_size=257\) does not match "
                                         r"w.h5 \(vocab_size=100\): its ids would index past "
                                         r"the model's 100 embedding rows; use the model's own "
                                         r"tokenizer$"):
        check_vocab(ByteTokenizer(), 100, where="w.h5")


# ------------------------------------------------------------------------------- BPE
def test_bpe_defaults_merge_only_pairs_seen_twice():
    # min_frequency defaults to 2: a pair seen once is not merged (256 bytes + EOT only)
    assert BPETokenizer.train(["xq"], vocab_size=300).vocab_size == 257
    assert BPETokenizer.train(["xq"], vocab_size=300, min_frequency=1).vocab_size == 258
    assert BPETokenizer.train(["xq xq"], vocab_size=300).vocab_size > 257
    assert BPETokenizer.train(["xq"], vocab_size=257).vocab_size == 257  # the smallest allowed


def test_bpe_default_vocab_size_is_2048():
    from kzoo.data import load_documents

    assert BPETokenizer.train(load_documents("pydocs")).vocab_size == 2048


def test_bpe_encodes_batches_decodes_eot_and_any_shape():
    tok = BPETokenizer.train(["the cat sat on the mat"] * 20, vocab_size=300)
    texts = ["the cat", "mat ✓", ""]
    batch = tok.encode_batch(texts)
    assert [b.dtype for b in batch] == [np.int32] * 3
    assert [b.tolist() for b in batch] == [tok.encode(t).tolist() for t in texts]
    ids = tok.encode("the mat")
    assert tok.decode(np.concatenate([ids, [tok.eot_id]])) == "the mat" + EOT_TOKEN
    assert tok.decode(np.stack([ids, ids])) == "the matthe mat"
    with pytest.raises(ValueError, match=r"bpe tokenizer options are vocab_size, "
                                         r"min_frequency; got \['merges'\]"):
        BPETokenizer.train(["x"], merges=2)
    with pytest.raises(ValueError, match=r"bpe vocab_size must be >= 257 \(bytes \+ EOT\), "
                                         r"got 256"):
        BPETokenizer.train(["x"], vocab_size=256)


def test_bpe_loads_its_model_file_by_name_only(tmp_path):
    tok = BPETokenizer.train(["the cat sat on the mat"] * 20, vocab_size=300)
    folder = tok.save(tmp_path / "t")
    assert json.loads((folder / CONFIG_FILE).read_text())["config"] == {"model_file": "bpe.json"}
    # a config pointing outside the folder still reads the folder's own file
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["config"]["model_file"] = "../../elsewhere/bpe.json"
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    loaded = load_tokenizer(folder)
    assert loaded.encode("the mat").tolist() == tok.encode("the mat").tolist()
    assert loaded.eot_id == tok.eot_id


def test_saved_config_bytes_are_stable(tmp_path):
    # The same tokenizer always writes the same bytes (a run folder's hashes cover them):
    # UTF-8 JSON, non-ASCII kept, one-space indent, keys in the order kind, vocab_size, config.
    CharTokenizer("aé").save(tmp_path)
    assert (tmp_path / CONFIG_FILE).read_bytes() == (
        '{\n "kind": "char",\n "vocab_size": 4,\n "config": {\n  "chars": "aé"\n }\n}'
        .encode())


def test_register_adds_a_kind():
    from kzoo.tokenizers import base

    @base.register("test_only_kind")
    class Upper(CharTokenizer):
        pass

    try:
        assert Upper.kind == "test_only_kind" and base.get("test_only_kind") is Upper
        assert "test_only_kind" in base.list_tokenizers()
        assert base.train_tokenizer("test_only_kind", ["ba"]).chars == "ab"
    finally:
        base._REGISTRY.pop("test_only_kind")
    assert CharTokenizer.kind == "char"  # the subclass's kind did not leak to its parent
