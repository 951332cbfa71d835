"""`kzoo prepare`: tokenize a corpus of any size into a prepared folder of token shards.

The corpus is streamed (`kzoo.data.streams`): nothing but a batch of documents is in memory.
Each document goes to the training or the validation split by a seeded hash of its number, is
encoded in batches (the `tokenizers` library's Rust threads use every core while a reader
thread reads the next batch), followed by the end-of-text id, and appended to its split's
current shard. A shard closes after the document that brings it to `shard_tokens` (documents
never straddle shards, so each shard lists its document starts) and is then renamed into
place and recorded in `index.json`, which is replaced atomically. Killed at any moment, the same
command skips the documents of the recorded shards and writes the rest: the folder ends byte
for byte as an uninterrupted run leaves it. The folder's format: `docs/reference/data.md`.

Example:

>>> import tempfile
>>> from kzoo.data.prepare import prepare
>>> folder = tempfile.mkdtemp() + "/prepared"
>>> index = prepare(["pydocs"], folder, tokenizer="byte", shard_tokens=200_000,
...                 progress=False)
>>> train = index["splits"].get("train")
>>> index["complete"], index["dtype"], train["tokens"] > 100_000
(True, 'uint16', True)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from kzoo.data.streams import Segment, describe_sources, iter_documents, total_bytes
from kzoo.data.writing import Progress, ShardWriter, prefetched, say

FORMAT, VERSION = "kzoo-prepared", 1
INDEX, TOKENIZER_DIR = "index.json", "tokenizer"
SPLITS = ("train", "validation")
TRAINABLE = ("bpe", "char", "byte")
_BATCH_BYTES = 2 << 20


def tokenizer_identity(tokenizer) -> str:
    """sha256 of the files `tokenizer.save` writes: equal for equal tokenizers, whatever
    folder (kzoo or Hugging Face layout) they were loaded from."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        return _folder_sha256(Path(tmp))


def _folder_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def in_validation(seed: int, number: int, fraction: float) -> bool:
    """Whether document `number` is held out: splitmix64 of (seed, number) below `fraction`."""
    x = (seed * 0x9E3779B97F4A7C15 + number + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return ((x ^ (x >> 31)) >> 11) * (1.0 / (1 << 53)) < fraction


def prepare(sources: list[str], out: str | os.PathLike, tokenizer: str = "bpe",
            vocab_size: int | None = None, train_sample_bytes: int = 64 << 20,
            shard_tokens: int = 1 << 26, validation_fraction: float = 0.01, seed: int = 0,
            text_column: str = "text", skip_invalid: bool = False, tfds_split: str = "train",
            tfds_data_dir: str | None = None, tfds_manual_dir: str | None = None,
            progress: bool | None = None) -> dict:
    """Tokenize `sources` into the prepared folder `out` (or finish one an interrupted run left).

    Args:
        sources: list[str]. paths or globs of text, `.jsonl` and `.parquet` files, "pydocs",
            "pydocs+docstrings" or "tfds:NAME".
        out: str | PathLike. the prepared folder (created; an existing one must be one this
            command started with the same settings).
        tokenizer: str. a saved kzoo or Hugging Face tokenizer folder, or a kind to train
            first on the corpus ("bpe", "char"; "byte" needs no training).
        vocab_size: int | None. target size of a trained "bpe" tokenizer (default 8192).
        train_sample_bytes: int. text from the start of the training split that a trained
            tokenizer learns from.
        shard_tokens: int. tokens per shard (a shard closes at the first document end past it).
        validation_fraction: float. share of documents held out, in [0, 1).
        seed: int. seed of the held-out choice.
        text_column: str. the text field of JSONL records and Parquet rows.
        skip_invalid: bool. skip and count documents that are not UTF-8 instead of stopping.
        tfds_split: str. the split read from "tfds:NAME" sources.
        tfds_data_dir: str | None. TFDS's data folder; tfds_manual_dir: str | None. the raw
            files for an offline TFDS build (for tiny_shakespeare: `input.txt`).
        progress: bool | None. a progress line with tokens/s and an ETA (None: on a terminal).

    Returns:
        dict. the index written to `out/index.json`.

    Raises:
        ValueError: one line naming the file, row, key or folder (bad input, another
            tokenizer or source list in `out`, a full disk); shards finished before are kept.
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction}")
    if shard_tokens < 1 or shard_tokens >= 1 << 32:
        raise ValueError(f"shard_tokens must lie in [1, 2**32), got {shard_tokens}")
    out = Path(out)
    described = describe_sources(sources, tfds_split, tfds_data_dir, tfds_manual_dir)
    settings = {"sources": described, "text_column": text_column, "skip_invalid": skip_invalid,
                "shard_tokens": shard_tokens,
                "split": {"by": "document", "validation_fraction": validation_fraction,
                          "seed": seed},
                "tokenizer": {"spec": _spec(tokenizer, vocab_size, train_sample_bytes)}}
    index = _open_folder(out, settings)
    if index.get("complete"):
        say(progress, f"{out} is already prepared: nothing to do")
        return index
    tok = _tokenizer(out, index, tokenizer, vocab_size, train_sample_bytes, described,
                     text_column, skip_invalid, seed, validation_fraction)
    _Job(out, index, tok, described, progress).run()
    return index


def _spec(tokenizer: str, vocab_size, sample_bytes) -> dict:
    if tokenizer in TRAINABLE:
        if tokenizer != "bpe" and vocab_size is not None:
            raise ValueError(f"vocab_size applies to the 'bpe' tokenizer only, not {tokenizer!r}")
        trained = tokenizer != "byte"
        return {"train": tokenizer,
                "vocab_size": (vocab_size or 8192) if tokenizer == "bpe" else None,
                "sample_bytes": sample_bytes if trained else None}
    if not Path(tokenizer).is_dir():
        raise ValueError(f"tokenizer {tokenizer!r} is neither a tokenizer folder nor one of "
                         f"the kinds to train {list(TRAINABLE)}")
    return {"folder": str(Path(tokenizer).resolve())}


def _open_folder(out: Path, settings: dict) -> dict:
    """The folder's index: a new one, or the existing one when its settings are these."""
    path = out / INDEX
    if path.is_file():
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} is not readable JSON ({error}); remove {out} to start "
                             "over") from None
        check_format(index, path)
        for key, value in settings.items():
            if key == "tokenizer":
                value = {**index.get(key, {}), **value}
            if index.get(key) != value:
                raise ValueError(f"{out} was prepared with other {key}: {_short(index.get(key))}"
                                 f", not {_short(value)}; a prepared folder never mixes two; "
                                 "use another folder")
        for leftover in out.glob(".*.tmp"):  # a shard being written when the run was killed
            leftover.unlink()
        return index
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a prepared folder (no {INDEX}); give an "
                         "empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    index = {"format": FORMAT, "version": VERSION, "complete": False, **settings,
             "dtype": None, "splits": {s: {"tokens": 0, "documents": 0, "shards": []}
                                       for s in SPLITS}, "skipped_invalid": 0}
    _write_index(out, index)
    return index


def check_format(index, path) -> None:
    """Refuse an index of another format or of a newer version (naming both)."""
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{path} is not the index of a kzoo prepared folder")
    if not isinstance(index.get("version"), int) or index["version"] > VERSION:
        raise ValueError(f"{path} has format version {index.get('version')}; this kzoo reads "
                         f"version {VERSION} and older: upgrade kzoo to read it")


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 300 else text[:297] + "..."


def _write_index(out: Path, index: dict) -> None:
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / INDEX)


def _tokenizer(out, index, spec, vocab_size, sample_bytes, described, column, skip, seed,
               fraction):
    from kzoo.tokenizers import load_tokenizer, train_tokenizer

    folder = out / TOKENIZER_DIR
    if index["tokenizer"].get("sha256"):  # resuming: the tokenizer the shards were made with
        tok = load_tokenizer(folder)
        if tokenizer_identity(tok) != index["tokenizer"]["sha256"]:
            raise ValueError(f"{folder} is not the tokenizer {out / INDEX} records (sha256 "
                             "differs); remove the folder to prepare again")
        return tok
    shutil.rmtree(folder, ignore_errors=True)  # a killed first run's, never the user's
    if spec not in TRAINABLE:
        tok = load_tokenizer(spec)
    elif spec == "byte":
        tok = train_tokenizer("byte", [])
    else:
        sample = _sample(described, column, skip, seed, fraction, sample_bytes)
        options = {"vocab_size": vocab_size or 8192} if spec == "bpe" else {}
        tok = train_tokenizer(spec, sample if spec == "bpe" else list(sample), **options)
    tok.save(folder)
    index["tokenizer"].update(sha256=_folder_sha256(folder), kind=tok.kind,
                              vocab_size=tok.vocab_size, eot_id=int(tok.eot_id))
    index["dtype"] = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    _write_index(out, index)
    return tok


def _sample(described, column, skip, seed, fraction, limit):
    """Texts of the training split from the start of the corpus, up to `limit` characters."""
    taken, number = 0, 0
    for segment in iter_documents(described, column, skip):
        if not in_validation(seed, number, fraction):
            yield segment.text
            taken += len(segment.text)
            if taken >= limit:
                return
        number += segment.ends


class _Job:
    """One run of `prepare` over an opened folder: read, encode and write shards."""

    def __init__(self, out: Path, index: dict, tokenizer, described, progress):
        self.out, self.index, self.tokenizer = out, index, tokenizer
        self.described, self.dtype = described, np.dtype(index["dtype"])
        self.split = index["split"]
        self.eot = np.array([tokenizer.eot_id], self.dtype)
        self.writers = {s: ShardWriter(out, s, len(index["splits"][s]["shards"]), self.dtype)
                        for s in SPLITS}
        on_terminal = sys.stderr.isatty() if progress is None else progress
        self.bar = Progress(total_bytes(described), on_terminal, quiet=progress is False)

    def run(self) -> None:
        try:
            for batch in prefetched(self._batches()):
                self._write(batch)
            for split in SPLITS:
                self._close(split)
        except OSError as error:
            self._abort()
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ValueError(self._space_message()) from None
            raise ValueError(f"{self.out}: cannot write ({error.strerror or error})") from None
        except BaseException:
            self._abort()
            raise
        self.index["complete"] = True
        _write_index(self.out, self.index)
        self.bar.finish(self.index)

    def _batches(self):
        """Batches of (segment, split) to encode: documents of recorded shards are skipped."""
        skip = {s: self.index["splits"][s]["documents"] for s in SPLITS}
        invalid, batch, size, number, split = [], [], 0, 0, None
        for segment in iter_documents(self.described, self.index["text_column"],
                                      self.index["skip_invalid"], invalid=invalid):
            if segment.starts:
                split = ("validation" if in_validation(self.split["seed"], number,
                                                       self.split["validation_fraction"])
                         else "train")
            if skip[split]:
                skip[split] -= segment.ends
            else:
                batch.append((segment, split))
                size += len(segment.text)
            number += segment.ends
            if size >= _BATCH_BYTES:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch
        self.index["skipped_invalid"] = len(invalid)
        if invalid:
            print(f"warning: skipped {len(invalid)} documents that are not UTF-8, the first: "
                  f"{invalid[0]}", file=sys.stderr)

    def _write(self, batch: list[tuple[Segment, str]]) -> None:
        for (segment, split), ids in zip(batch, _encode(self.tokenizer, batch)):
            shard = self.writers[split]
            shard.append(ids.astype(self.dtype, copy=False), starts=segment.starts)
            if segment.ends:
                shard.append(self.eot, starts=False)
                if shard.tokens >= self.index["shard_tokens"]:
                    self._close(split)
            self.bar.update(len(ids) + segment.ends, segment.done)

    def _close(self, split: str) -> None:
        entry = self.writers[split].close()
        if entry is None:
            return
        record = self.index["splits"][split]
        record["shards"].append(entry)
        record["tokens"] += entry["tokens"]
        record["documents"] += entry["documents"]
        _write_index(self.out, self.index)
        self.writers[split] = ShardWriter(self.out, split, len(record["shards"]), self.dtype)

    def _abort(self) -> None:
        for shard in self.writers.values():
            shard.discard()

    def _space_message(self) -> str:
        free = shutil.disk_usage(self.out).free
        done, total = self.bar.done_bytes, self.bar.total
        written = sum(s["tokens"] for r in self.index["splits"].values() for s in r["shards"])
        per_byte = written * self.dtype.itemsize / done if done else self.dtype.itemsize / 2
        need = int((total - done) * per_byte * 1.1) if total else 0
        return (f"the disk of {self.out} is full ({free:,} bytes free): the shard being "
                f"written was removed, the {written:,} tokens of finished shards are kept; about "
                f"{need:,} more bytes are needed; free space and run the same command to go on")


def _encode(tokenizer, batch) -> list[np.ndarray]:
    """Encode a batch of segments; a document's later pieces get no special tokens."""
    starts = [i for i, (segment, _) in enumerate(batch) if segment.starts]
    out = [None] * len(batch)
    for i, ids in zip(starts, tokenizer.encode_batch([batch[i][0].text for i in starts])):
        out[i] = ids  # one batch for every document start: the Rust threads share it
    for i, (segment, _) in enumerate(batch):
        if not segment.starts:
            out[i] = _plain(tokenizer, segment.text)
    return out


def _plain(tokenizer, text: str) -> np.ndarray:
    try:
        return tokenizer.encode(text, add_special_tokens=False)  # Hugging Face tokenizers
    except TypeError:
        return tokenizer.encode(text)
