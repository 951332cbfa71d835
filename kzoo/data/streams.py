"""Documents read one at a time from a corpus of any size: text files, JSONL and Parquet shards,
TFDS data sets and the embedded pydocs corpus. What `kzoo prepare` tokenizes.

`load_documents` (kzoo.data.sources) returns a whole corpus as a list; here nothing is held but
the document being read. A text file is one document, read in pieces of about `piece_bytes` cut
after a newline that a non-space character follows: a byte-level BPE pre-tokenizer splits there
anyway, so the pieces encode to the same ids as the whole file. JSONL is read line by line and
Parquet by row group (pyarrow), each row's `text_column` one document (a `.json` list of records
is read whole).

Every document carries where it came from ("books/a.txt", "web.parquet row 17") for error
messages, and how far through its source's bytes the reader is (for a progress bar's ETA).

Example:

>>> from kzoo.data.streams import describe_sources, iter_documents
>>> sources = describe_sources(["pydocs"])
>>> segment = next(iter_documents(sources))
>>> segment.where.startswith("pydocs") and segment.starts and segment.ends
True
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path

PIECE_BYTES = 8 << 20
_BUILTIN = ("pydocs", "pydocs+docstrings")
_RECORD_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclasses.dataclass
class Segment:
    """A document or a piece of one: `text`, `where` it came from, whether it `starts` and
    `ends` its document, and `done` (bytes of the sources read so far, for progress)."""

    text: str
    where: str
    starts: bool = True
    ends: bool = True
    done: int = 0


class InvalidText(ValueError):
    """A document that is not valid UTF-8 (skipped and counted with `skip_invalid`)."""


def describe_sources(sources: list[str], tfds_split: str = "train",
                     tfds_data_dir: str | None = None,
                     tfds_manual_dir: str | None = None) -> list[dict]:
    """Resolve source names into what the index records: each source with its files and sizes.

    Args:
        sources: list[str]. "pydocs", "pydocs+docstrings", "tfds:NAME" or paths/globs of text,
            `.jsonl` and `.parquet` files.
        tfds_split: str. the split read from TFDS sources.
        tfds_data_dir: str | None. where TFDS keeps prepared data (TFDS default when None).
        tfds_manual_dir: str | None. the raw downloaded files, for offline use.

    Returns:
        list[dict]. `{"source", "files": [{"path", "bytes"}]}` per source, files sorted.

    Raises:
        ValueError: a path or glob that matches no file (named).
    """
    if not sources:
        raise ValueError("no data source given; name files, globs, 'pydocs' or 'tfds:NAME'")
    described = []
    for source in sources:
        if source in _BUILTIN:
            described.append({"source": source, "files": []})
        elif source.startswith("tfds:"):
            described.append({"source": source, "split": tfds_split, "files": [],
                              "data_dir": tfds_data_dir, "manual_dir": tfds_manual_dir})
        else:
            paths = sorted(p for p in glob.glob(os.path.expanduser(source), recursive=True)
                           if os.path.isfile(p))
            if not paths:
                raise ValueError(f"data source {source!r} matches no file; expected 'pydocs', "
                                 "'pydocs+docstrings', 'tfds:NAME' or a path/glob of text, "
                                 ".jsonl or .parquet files")
            files = [{"path": os.path.abspath(p), "bytes": os.path.getsize(p)} for p in paths]
            described.append({"source": source, "files": files})
    return described


def total_bytes(described: list[dict]) -> int:
    """Bytes of every file of the described sources (built-in sources count 0)."""
    return sum(f["bytes"] for s in described for f in s["files"])


def iter_documents(described: list[dict], text_column: str = "text",
                   skip_invalid: bool = False, piece_bytes: int | None = None,
                   invalid: list | None = None) -> Iterator[Segment]:
    """Yield every non-empty document of the described sources, in order, as segments (one
    per document, except for text files longer than `piece_bytes`).

    Args:
        described: list[dict]. what `describe_sources` returned.
        text_column: str. the text field of JSONL records and Parquet rows.
        skip_invalid: bool. skip documents that are not UTF-8 (appending where each was to
            `invalid`) instead of stopping at the first.
        piece_bytes: int | None. how much of a text file is read at once (None: PIECE_BYTES).
        invalid: list | None. receives the location of each skipped document.

    Raises:
        ValueError: one line naming the file (and line or row): invalid UTF-8, a file with no
            text, a record without the text column (naming the columns it has), bad JSON.
    """
    done, piece_bytes = 0, piece_bytes or PIECE_BYTES
    for source in described:
        name = source["source"]
        if not source["files"]:
            for segment in _named_documents(source, text_column):
                segment.done = done
                yield segment
            continue
        for file in source["files"]:
            path = Path(file["path"])
            read = _records if path.suffix in _RECORD_SUFFIXES else _text_file
            count = 0
            try:
                for segment, within in read(path, text_column, piece_bytes):
                    count += 1
                    segment.done = done + within
                    yield segment
            except InvalidText as error:
                if not skip_invalid:
                    raise ValueError(f"{error} (kzoo prepare --skip-invalid skips and counts "
                                     "such documents)") from None
                if invalid is not None:
                    invalid.append(str(error))
                count += 1  # not empty: the file had text, some of it invalid
            if count == 0:
                raise ValueError(f"{path} holds no text (source {name!r}): an empty file or "
                                 f"one whose {text_column!r} values are all empty")
            done += file["bytes"]


def _named_documents(source: dict, text_column: str) -> Iterator[Segment]:
    from kzoo.data import sources

    name = source["source"]
    if name.startswith("tfds:"):
        texts = sources.tfds_documents(name[5:], source.get("split", "train"),
                                       source.get("data_dir"), source.get("manual_dir"),
                                       text_key=text_column)
    else:  # the built-in corpora are small (about 1 MB): a list is fine
        texts = sources.load_documents(name)
    for i, text in enumerate(texts):
        if text.strip():
            yield Segment(text, f"{name} document {i}")


def _text_file(path: Path, text_column: str, piece_bytes: int):
    """One document per file, in pieces that end after a newline followed by a non-space
    character (where a byte-level pre-tokenizer splits anyway); at most two pieces in memory."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    held, pending, offset, has_text = None, "", 0, False
    with open(path, "rb") as f:
        while True:
            chunk = f.read(piece_bytes)
            try:
                text = pending + decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                raise InvalidText(f"{path} is not UTF-8 text: invalid byte near byte offset "
                                  f"{offset + max(error.start - len(pending), 0)} "
                                  f"({error.reason})") from None
            offset += len(chunk)
            cut = _last_safe_cut(text) if chunk else len(text)
            pending = text[cut:]
            if cut == 0:
                if not chunk:
                    break
                continue
            piece = text[:cut]
            has_text = has_text or bool(piece.strip())
            if held is not None:  # not the last piece: hand it out
                yield held, offset
            held = Segment(piece, str(path), starts=held is None, ends=False)
            if not chunk:
                break
    if held is not None and (has_text or not held.starts):  # a started document ends
        held.ends = True
        yield held, offset


def _last_safe_cut(text: str) -> int:
    """The index after the last newline that a non-space character follows, or 0."""
    at = len(text) - 1
    while True:
        at = text.rfind("\n", 0, at)
        if at < 0 or at + 1 >= len(text):
            return 0
        if not text[at + 1].isspace():
            return at + 1


def _records(path: Path, text_column: str, piece_bytes: int):
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, text_column)
        return
    if path.suffix == ".json":  # one JSON list: read whole, as `read_records` does
        from kzoo.data.records import read_records

        for where, record in read_records(path):
            text = _text_of(record, text_column, where)
            if text.strip():
                yield Segment(text, where), path.stat().st_size
        return
    with open(path, "rb") as f:
        offset = 0
        for number, raw in enumerate(f, start=1):
            offset += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidText(f"{path} line {number} is not UTF-8 text ({error.reason})"
                                  ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number}: invalid JSON ({error.msg})") from None
            text = _text_of(record, text_column, f"{path} line {number}")
            if text.strip():
                yield Segment(text, f"{path} line {number}"), offset


def _text_of(record, column: str, where: str) -> str:
    if not isinstance(record, dict) or column not in record:
        has = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where} has no text column {column!r}; it has {has} "
                         "(kzoo prepare --text-column NAME)")
    value = record[column]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: column {column!r} must hold text, got "
                         f"{type(value).__name__}")
    return value


def _parquet_rows(path: Path, column: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable Parquet file "
                         f"({' '.join(str(error).split())[:200]})") from None
    names = parquet.schema_arrow.names
    if column not in names:
        raise ValueError(f"{path} has no text column {column!r}; its columns are {names} "
                         "(kzoo prepare --text-column NAME)")
    size, groups, row = os.path.getsize(path), parquet.num_row_groups, 0
    for group in range(groups):
        try:  # one row group at a time: a shard of several GB is never read whole
            values = parquet.read_row_group(group, columns=[column]).column(0).to_pylist()
        except (pa.ArrowException, OSError) as error:
            raise ValueError(f"{path} row group {group}: not readable "
                             f"({' '.join(str(error).split())[:200]})") from None
        within = size * (group + 1) // groups
        for value in values:
            text = _text_of({column: value}, column, f"{path} row {row}")
            if text.strip():
                yield Segment(text, f"{path} row {row}"), within
            row += 1
