"""`kzoo prepare`: the prepared folder holds exactly the in-memory encoding of the corpus, split
by document; an interrupted run ends byte for byte as an uninterrupted one."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kzoo.data import prepare as prep
from kzoo.data import streams, writing
from kzoo.data.prepare import in_validation, prepare, tokenizer_identity
from kzoo.data.shards import PreparedCorpus
from kzoo.tokenizers import BPETokenizer, CharTokenizer, HFTokenizer, load_tokenizer

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paragraphs(tmp_path_factory) -> list[str]:
    """About 2,000 short documents: the shared Shakespeare text cut at blank lines."""
    root = os.environ.get("KZOO_TEST_DATA")
    path = Path(root) / "tinyshakespeare.txt" if root else None
    text = path.read_text() if path else "\n\n".join(
        f"Speaker {i}:\nWords number {i} and more words {i * 7}." for i in range(2000))
    return [p for p in text.split("\n\n") if p.strip()][:2000]


def corpus(tmp_path: Path, docs: list[str]) -> list[str]:
    """The documents as a JSONL file, a Parquet file of small row groups and text files."""
    third = len(docs) // 3
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n"
                             for i, d in enumerate(docs[:third])))
    pq.write_table(pa.table({"text": docs[third:2 * third]}), tmp_path / "b.parquet",
                   row_group_size=97)
    texts = tmp_path / "texts"
    texts.mkdir()
    for i, doc in enumerate(docs[2 * third:2 * third + 20]):
        (texts / f"{i:03d}.txt").write_text(doc)
    return [str(jsonl), str(tmp_path / "b.parquet"), str(texts / "*.txt")]


def in_memory(tokenizer, docs, fraction, seed):
    """What the prepared splits must hold: kzoo's in-memory encoding, split by document."""
    held = [in_validation(seed, i, fraction) for i in range(len(docs))]
    train = tokenizer.encode_documents([d for d, h in zip(docs, held) if not h])
    val = tokenizer.encode_documents([d for d, h in zip(docs, held) if h])
    return train, val


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shards_hold_the_in_memory_encoding_split_by_document(tmp_path, paragraphs):
    sources = corpus(tmp_path, paragraphs)
    docs = paragraphs[:2 * (len(paragraphs) // 3) + 20]
    index = prepare(sources, tmp_path / "out", tokenizer="bpe", vocab_size=400,
                    train_sample_bytes=50_000, shard_tokens=20_000, validation_fraction=0.1,
                    seed=3, progress=False)
    tok = load_tokenizer(tmp_path / "out/tokenizer")
    train, val = in_memory(tok, docs, 0.1, 3)
    corpus_ = PreparedCorpus(tmp_path / "out")
    assert corpus_.tokenizer_sha256 == tokenizer_identity(tok)
    np.testing.assert_array_equal(corpus_.split("train").read(0, len(train)), train)
    np.testing.assert_array_equal(corpus_.split("validation").read(0, len(val)), val)
    assert len(corpus_.split("train")) == len(train)
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    # shards close at the first document end past shard_tokens; each lists its documents
    shards = index["splits"]["train"]["shards"]
    assert len(shards) > 3 and all(s["tokens"] >= 20_000 for s in shards[:-1])
    for s in shards:
        data = (tmp_path / "out" / s["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
        assert len(data) == 2 * s["tokens"]  # uint16: the vocabulary fits
    starts = corpus_.split("train").document_starts()
    assert len(starts) == index["splits"]["train"]["documents"] == sum(
        not in_validation(3, i, 0.1) for i in range(len(docs)))
    np.testing.assert_array_equal(starts[1:], np.flatnonzero(train == tok.eot_id)[:-1] + 1)
    assert index["tokenizer"]["spec"] == {"train": "bpe", "vocab_size": 400,
                                          "sample_bytes": 50_000}
    assert [f["bytes"] for s in index["sources"] for f in s["files"]][:2] == [
        os.path.getsize(sources[0]), os.path.getsize(sources[1])]


def test_the_trained_tokenizer_learns_from_a_streamed_sample(tmp_path, paragraphs):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in paragraphs))
    prepare([str(path)], tmp_path / "out", tokenizer="bpe", vocab_size=300,
            train_sample_bytes=20_000, validation_fraction=0.0, progress=False)
    sample, size = [], 0
    for doc in paragraphs:  # the first 20,000 characters' documents, nothing more
        sample.append(doc)
        size += len(doc)
        if size >= 20_000:
            break
    expected = BPETokenizer.train(sample, vocab_size=300)
    assert tokenizer_identity(load_tokenizer(tmp_path / "out/tokenizer")) == \
        tokenizer_identity(expected)


def test_a_long_text_file_read_in_pieces_encodes_as_a_whole(tmp_path, paragraphs, monkeypatch):
    text = "\n\n".join(paragraphs[:300]) + "\n  indented last line\n"
    (tmp_path / "book.txt").write_text(text)
    tok = BPETokenizer.train(paragraphs[:300], vocab_size=500)
    tok.save(tmp_path / "tok")
    monkeypatch.setattr(streams, "PIECE_BYTES", 4096)  # about 7 pieces a file
    segments = list(streams.iter_documents(streams.describe_sources([str(tmp_path / "book.txt")
                                                                     ])))
    assert len(segments) > 5 and "".join(s.text for s in segments) == text
    assert [s.starts for s in segments] == [True] + [False] * (len(segments) - 1)
    assert [s.ends for s in segments] == [False] * (len(segments) - 1) + [True]
    # with short files between them: batches mix document starts and later pieces
    (tmp_path / "book2.txt").write_text(text[::-1].replace("\n", "\nX"))
    (tmp_path / "a-note.txt").write_text("A short note.\n")
    files = sorted(str(p) for p in tmp_path.glob("*.txt"))
    prepare(files, tmp_path / "out", tokenizer=str(tmp_path / "tok"), validation_fraction=0.0,
            progress=False)
    expected = tok.encode_documents([Path(f).read_text() for f in files])
    np.testing.assert_array_equal(
        PreparedCorpus(tmp_path / "out").split("train").read(0, len(expected)), expected)


def test_hugging_face_folder_and_a_vocabulary_past_uint16(tmp_path, paragraphs):
    hf = HFTokenizer.from_kzoo(BPETokenizer.train(paragraphs[:200], vocab_size=300))
    hf.save(tmp_path / "hf")
    docs = paragraphs[:50]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    index = prepare([str(tmp_path / "a.jsonl")], tmp_path / "out", tokenizer=str(tmp_path / "hf"),
                    text_column="body", validation_fraction=0.0, progress=False)
    np.testing.assert_array_equal(PreparedCorpus(tmp_path / "out").split("train").read(
        0, index["splits"]["train"]["tokens"]), hf.encode_documents(docs))
    # 70,000 distinct characters: ids past 65,535 are stored as uint32
    wide = "".join(chr(0x4E00 + i) if i < 20_000 else chr(0x20000 + i) for i in range(70_000))
    (tmp_path / "wide.txt").write_text(wide)
    CharTokenizer.train([wide]).save(tmp_path / "chars")
    index = prepare([str(tmp_path / "wide.txt")], tmp_path / "wide", progress=False,
                    tokenizer=str(tmp_path / "chars"), validation_fraction=0.0)
    assert index["dtype"] == "uint32"
    tokens = PreparedCorpus(tmp_path / "wide").split("train").read(0, 70_001)
    assert tokens.max() > 65_535
    np.testing.assert_array_equal(tokens, load_tokenizer(tmp_path / "chars").encode_documents(
        [wide]))


@pytest.mark.parametrize("where", ["before_rename", "after_rename", "after_index"])
def test_interrupted_anywhere_then_rerun_ends_byte_for_byte(tmp_path, paragraphs, monkeypatch,
                                                             where):
    sources = corpus(tmp_path, paragraphs)
    options = dict(tokenizer="char", shard_tokens=15_000, validation_fraction=0.2,
                   progress=False)
    prepare(sources, tmp_path / "whole", **options)
    real_close, real_write = writing.ShardWriter.close, prep._write_index
    calls = {"close": 0}

    def close(self):
        calls["close"] += 1
        if calls["close"] == 4 and where == "before_rename":
            raise KeyboardInterrupt
        entry = real_close(self)
        if calls["close"] == 4 and where == "after_rename":
            raise KeyboardInterrupt
        return entry

    def write_index(out, index):
        real_write(out, index)
        if where == "after_index" and calls["close"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(writing.ShardWriter, "close", close)
    monkeypatch.setattr(prep, "_write_index", write_index)
    with pytest.raises(KeyboardInterrupt):
        prepare(sources, tmp_path / "cut", **options)
    monkeypatch.undo()
    assert not json.loads((tmp_path / "cut/index.json").read_text())["complete"]
    prepare(sources, tmp_path / "cut", **options)
    assert files_of(tmp_path / "cut") == files_of(tmp_path / "whole")


def test_kill_9_then_the_same_command_ends_byte_for_byte(tmp_path, paragraphs):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in paragraphs * 8))
    command = [sys.executable, "-m", "kzoo.cli.main", "prepare", str(path), "--tokenizer",
               "char", "--shard-tokens", "4000", "--validation-fraction", "0.1", "--quiet"]
    whole = subprocess.run([*command, "--out", str(tmp_path / "whole")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen([*command, "--out", str(tmp_path / "cut")], cwd=ROOT,
                            stderr=subprocess.PIPE)
    index, deadline = tmp_path / "cut/index.json", time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        if index.is_file() and '"train-00003.bin"' in index.read_text():
            break
        time.sleep(0.002)
    assert proc.poll() is None, "finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not json.loads(index.read_text())["complete"]
    again = subprocess.run([*command, "--out", str(tmp_path / "cut")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert files_of(tmp_path / "cut") == files_of(tmp_path / "whole")


def test_the_module_examples_run():
    import doctest

    for module in (streams, prep):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0, module


def test_tfds_and_pydocs_sources(tmp_path):
    from tests.conftest import shared_data_file

    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "input.txt").write_bytes(shared_data_file("tinyshakespeare.txt").read_bytes())
    index = prepare(["tfds:tiny_shakespeare", "pydocs"], tmp_path / "out", tokenizer="byte",
                    validation_fraction=0.0, tfds_data_dir=str(tmp_path / "tfds"),
                    tfds_manual_dir=str(manual), progress=False)
    from kzoo.data import load_documents

    docs = load_documents("tfds:tiny_shakespeare", data_dir=str(tmp_path / "tfds"),
                          manual_dir=str(manual)) + load_documents("pydocs")
    tok = load_tokenizer(tmp_path / "out/tokenizer")
    expected = tok.encode_documents(docs)
    np.testing.assert_array_equal(
        PreparedCorpus(tmp_path / "out").split("train").read(0, len(expected)), expected)
    assert index["splits"]["train"]["documents"] == len(docs)
