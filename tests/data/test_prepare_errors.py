"""Bad input to `kzoo prepare` and to a prepared folder: one line naming the file, row, key or
shard; exit code 2 from the command; nothing prepared before is lost."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kzoo.data.prepare import prepare
from kzoo.data.shards import PreparedCorpus

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ROOT = Path(__file__).resolve().parents[2]
WORDS = [f"Document {i}: the quick brown fox {i * 3} jumps over the lazy dog." for i in range(400)]


def jsonl(path: Path, docs=WORDS, key="text") -> str:
    path.write_text("".join(json.dumps({key: d}) + "\n" for d in docs))
    return str(path)


def kzoo(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "kzoo.cli.main", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def one_error_line(done) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_invalid_utf8_names_the_file_and_offset_and_can_be_skipped(tmp_path):
    (tmp_path / "a.txt").write_text("fine text\n")
    (tmp_path / "b.txt").write_bytes(b"good start \xff\xfe bad bytes\n")
    (tmp_path / "c.txt").write_text("more fine text\n")
    line = one_error_line(kzoo("prepare", tmp_path / "*.txt", "--out", tmp_path / "out",
                               "--tokenizer", "byte"))
    assert f"{tmp_path / 'b.txt'} is not UTF-8 text" in line and "offset 11" in line
    assert "--skip-invalid" in line
    index = prepare([str(tmp_path / "*.txt")], tmp_path / "skipped", tokenizer="byte",
                    skip_invalid=True, validation_fraction=0.0, progress=False)
    assert index["skipped_invalid"] == 1 and index["splits"]["train"]["documents"] == 2


@pytest.mark.parametrize("make, expected", [
    (lambda p: (p / "e.txt").write_text(""), "e.txt holds no text"),
    (lambda p: (p / "e.jsonl").write_text(json.dumps({"text": "  "}) + "\n"),
     "e.jsonl holds no text"),
    (lambda p: pq.write_table(pa.table({"body": ["x"], "id": [1]}), p / "e.parquet"),
     "e.parquet has no text column 'text'; its columns are ['body', 'id']"),
    (lambda p: (p / "e.jsonl").write_text('{"text": "ok"}\n{"text": \n'),
     "e.jsonl line 2: invalid JSON"),
    (lambda p: (p / "e.jsonl").write_text('{"text": "ok"}\n{"body": "x", "id": 2}\n'),
     "e.jsonl line 2 has no text column 'text'; it has ['body', 'id']"),
    (lambda p: (p / "e.jsonl").write_text('{"text": 7}\n'), "column 'text' must hold text"),
    (lambda p: (p / "e.parquet").write_bytes(b"PAR1 not really"), "not a readable Parquet"),
])
def test_bad_files_are_one_line_naming_them(tmp_path, make, expected):
    make(tmp_path)
    (name,) = [p.name for p in tmp_path.iterdir()]
    line = one_error_line(kzoo("prepare", tmp_path / name, "--out", tmp_path / "out",
                               "--tokenizer", "byte"))
    assert expected in line


def test_bad_arguments_are_one_line(tmp_path):
    source = jsonl(tmp_path / "a.jsonl")
    for args, expected in [
        (["--tokenizer", "nope"], "neither a tokenizer folder nor one of the kinds"),
        (["--tokenizer", "char", "--vocab-size", "300"], "vocab_size applies to the 'bpe'"),
        (["--shard-tokens", "0"], "--shard-tokens must be >= 1"),
        (["--validation-fraction", "1.5"], "validation_fraction must lie in [0, 1)"),
    ]:
        assert expected in one_error_line(kzoo("prepare", source, "--out", tmp_path / "o",
                                               *args))
    assert "matches no file" in one_error_line(kzoo("prepare", tmp_path / "none*.txt", "--out",
                                                    tmp_path / "o"))


def test_a_folder_never_mixes_two_tokenizers_or_two_source_lists(tmp_path):
    a, b = jsonl(tmp_path / "a.jsonl"), jsonl(tmp_path / "b.jsonl", WORDS[:100])
    out = tmp_path / "out"
    assert kzoo("prepare", a, "--out", out, "--tokenizer", "byte", "--quiet").returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    line = one_error_line(kzoo("prepare", a, "--out", out, "--tokenizer", "char"))
    assert "was prepared with other tokenizer" in line and '"train": "byte"' in line
    line = one_error_line(kzoo("prepare", a, b, "--out", out, "--tokenizer", "byte"))
    assert "was prepared with other sources" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    again = kzoo("prepare", a, "--out", out, "--tokenizer", "byte")
    assert again.returncode == 0 and "already prepared" in again.stderr


def test_a_folder_kzoo_did_not_make_is_refused_untouched(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    line = one_error_line(kzoo("prepare", jsonl(tmp_path / "a.jsonl"), "--out",
                               tmp_path / "mine", "--tokenizer", "byte"))
    assert "is not a prepared folder" in line
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.fixture
def prepared(tmp_path):
    prepare([jsonl(tmp_path / "a.jsonl", WORDS * 5)], tmp_path / "out", tokenizer="byte",
            shard_tokens=20_000, validation_fraction=0.1, progress=False)
    return tmp_path / "out"


def test_truncated_altered_unfinished_and_newer_folders_are_refused(prepared):
    PreparedCorpus(prepared)
    shard = prepared / "train-00001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-2])
    with pytest.raises(ValueError, match=r"shard .*train-00001.bin is truncated or altered: "
                                         r"[\d,]+ bytes, the index says"):
        PreparedCorpus(prepared)
    shard.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    with pytest.raises(ValueError, match=r"train-00001.bin is altered: its sha256 differs"):
        PreparedCorpus(prepared)
    PreparedCorpus(prepared, verify=False)  # sizes only, when asked
    shard.write_bytes(data)
    index = json.loads((prepared / "index.json").read_text())
    (prepared / "index.json").write_text(json.dumps({**index, "version": 99}))
    with pytest.raises(ValueError, match="has format version 99; this kzoo reads version 1"):
        PreparedCorpus(prepared)
    (prepared / "index.json").write_text(json.dumps({**index, "complete": False}))
    with pytest.raises(ValueError, match="is not finished: run the same `kzoo prepare`"):
        PreparedCorpus(prepared)
    with pytest.raises(ValueError, match="is not a prepared folder"):
        PreparedCorpus(prepared / "tokenizer")


def test_a_full_disk_keeps_finished_shards_and_names_the_space_needed(small_tmpfs, tmp_path):
    source = jsonl(tmp_path / "a.jsonl", WORDS * 200)  # about 5.6 MB of text, 11 MB as uint16
    line = one_error_line(kzoo("prepare", source, "--out", small_tmpfs / "out", "--tokenizer",
                               "byte", "--shard-tokens", "500000"))
    assert f"the disk of {small_tmpfs / 'out'} is full" in line
    assert "more bytes are needed" in line and "the shard being written was removed" in line
    index = json.loads((small_tmpfs / "out/index.json").read_text())
    kept = [s["file"] for r in index["splits"].values() for s in r["shards"]]
    assert kept and not index["complete"]
    names = sorted(p.name for p in (small_tmpfs / "out").iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    assert set(kept) <= set(names)


def test_the_command_imports_no_tensorflow(tmp_path):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "kzoo.cli.main", "prepare",
                           "pydocs", "--out", tmp_path / "out", "--tokenizer", "byte"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| tensorflow" not in done.stderr and "| keras" not in done.stderr
    assert "prepared: " in done.stderr
    assert "\r" not in done.stderr and "ETA" not in done.stderr  # quiet in a log


def test_the_progress_line_on_a_terminal_shows_tokens_per_second_and_an_eta(capsys):
    from kzoo.data.writing import Progress

    bar = Progress(total_bytes=4_000_000, enabled=True, quiet=False)
    bar.began -= 10.0  # 10 s in
    bar.shown -= 1.0
    bar.update(3_000_000, 1_000_000)
    line = capsys.readouterr().err
    assert line.startswith("\r") and "3.0M tokens, 300k tokens/s" in line
    assert "25% of 4 MB, ETA 0m30s" in line


def test_a_json_list_of_records_is_read_by_its_text_column(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"text": "one"}, {"text": "two"}]))
    index = prepare([str(tmp_path / "a.json")], tmp_path / "out", tokenizer="byte",
                    validation_fraction=0.0, progress=False)
    assert index["splits"]["train"]["tokens"] == len("one") + len("two") + 2
    (tmp_path / "b.json").write_text(json.dumps([{"body": "one"}]))
    assert "b.json record 0 has no text column 'text'; it has ['body']" in one_error_line(
        kzoo("prepare", tmp_path / "b.json", "--out", tmp_path / "o2", "--tokenizer", "byte"))
