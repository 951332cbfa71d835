"""Text sources: embedded pydocs corpus, files and globs, TFDS offline, bad input."""

import hashlib

import pytest

from kzoo.data import file_documents, load_documents, read_text_file


def test_pydocs_is_embedded_english_prose():
    docs = load_documents("pydocs")
    text = "\n".join(docs)
    assert len(docs) > 50
    assert 400_000 < len(text) < 600_000
    assert 'The "for" statement' in text
    assert docs == load_documents("pydocs")  # deterministic order


def test_pydocs_plus_docstrings_adds_text():
    assert sum(map(len, load_documents("pydocs+docstrings"))) > 1.5 * sum(
        map(len, load_documents("pydocs"))
    )


def test_files_and_globs(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "empty.txt").write_text("  \n")
    assert load_documents(str(tmp_path / "*.txt")) == ["first", "second"]
    assert load_documents(str(tmp_path / "a.txt")) == ["first"]


def test_no_match_names_the_pattern(tmp_path):
    with pytest.raises(ValueError, match="matches no file"):
        file_documents(str(tmp_path / "nothing*.txt"))


def test_non_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 ok")
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8.*byte offset 3"):
        read_text_file(path)
    with pytest.raises(ValueError, match="byte offset 3"):
        load_documents(str(path))


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n   ")
    with pytest.raises(ValueError, match="empty corpus"):
        load_documents(str(tmp_path / "blank.txt"))


def test_unknown_tfds_name():
    with pytest.raises(ValueError, match="unknown TFDS data set"):
        load_documents("tfds:no_such_dataset_xyz")


def test_tfds_tiny_shakespeare_offline(shakespeare_path, tmp_path):
    """The real TFDS builder, prepared from a manual_dir copy with no network."""
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "input.txt").write_bytes(shakespeare_path.read_bytes())
    kwargs = dict(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
    train = load_documents("tfds:tiny_shakespeare", "train", **kwargs)
    held_out = load_documents("tfds:tiny_shakespeare", "validation+test", **kwargs)
    full = shakespeare_path.read_text(encoding="utf-8")
    assert train[0].startswith("First Citizen:")
    # train + validation + test is the whole file, in order; the held-out part is the last 10%.
    assert train[0] + "".join(held_out) == full
    assert 0.09 < sum(map(len, held_out)) / len(full) < 0.11
    assert hashlib.sha256(shakespeare_path.read_bytes()).hexdigest() == hashlib.sha256(
        full.encode("utf-8")
    ).hexdigest()
