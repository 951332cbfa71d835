"""Reading a prepared folder (`kzoo prepare`): its index checked, its shards memory-mapped.

`PreparedCorpus(folder)` checks the index (format version, completeness) and every shard's size
and sha256 (read in 1 MiB blocks, so a check never maps a shard), then gives each split as a
`TokenStream`: the split's shards seen as one token sequence that is never loaded whole.
`TokenStream.windows(starts, length)` copies out the few windows a batch needs (a window may run
across a shard boundary); `document_starts()` is where each document begins, for BOS-aligned
packing. The training stream (`kzoo.data.pipeline.train_dataset`) takes a `TokenStream` where it
takes an in-memory array, so the sample order stays a pure function of (seed, global step).

Example:
```python
from kzoo.data.shards import PreparedCorpus
corpus = PreparedCorpus("prepared/web")
train = corpus.split("train")          # TokenStream
len(train), train.windows([0, 100], 9).shape   # (N, (2, 9))
```
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kzoo._files import file_sha256
from kzoo.data.prepare import INDEX, SPLITS, TOKENIZER_DIR, check_format, tokenizer_identity


class TokenStream:
    """The shards of one split as one read-only token sequence (memory maps, opened lazily).

    Args:
        files: list[Path]. the shard files, in order.
        counts: list[int]. tokens in each shard.
        dtype: str. the stored id type ("uint16" or "uint32").
        starts_files: list[Path]. each shard's document starts (uint32 offsets in the shard).
    """

    def __init__(self, files, counts, dtype, starts_files):
        self.files, self.counts = [Path(f) for f in files], [int(c) for c in counts]
        self.starts_files = [Path(f) for f in starts_files]
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.bounds = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def _map(self, shard: int) -> np.memmap:
        if shard not in self._maps:
            self._maps[shard] = np.memmap(self.files[shard], self.dtype, mode="r",
                                          shape=(self.counts[shard],))
        return self._maps[shard]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int32, across shard boundaries."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"tokens [{start}, {start + length}) lie outside 0..{len(self)}")
        out, at, filled = np.empty(length, np.int32), int(start), 0
        shard = int(np.searchsorted(self.bounds, at, side="right")) - 1
        while filled < length:
            local = at - int(self.bounds[shard])
            take = min(length - filled, self.counts[shard] - local)
            out[filled:filled + take] = self._map(shard)[local:local + take]
            filled, at, shard = filled + take, at + take, shard + 1
        return out

    def windows(self, starts, length: int) -> np.ndarray:
        """int32 (len(starts), length): the window of `length` tokens at each start."""
        starts = np.asarray(starts, np.int64).reshape(-1)
        out = np.empty((len(starts), length), np.int32)
        for row, start in enumerate(starts):
            out[row] = self.read(int(start), length)
        return out

    def document_starts(self) -> np.ndarray:
        """int64 (documents,): where each document starts in the stream."""
        parts = [np.fromfile(path, "<u4").astype(np.int64) + self.bounds[i]
                 for i, path in enumerate(self.starts_files)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class PreparedCorpus:
    """A prepared folder, checked: its index, shard sizes and checksums, its tokenizer.

    Args:
        folder: str | PathLike. what `kzoo prepare` wrote.
        verify: bool. check every shard's sha256 (sizes are always checked).

    Raises:
        ValueError: one line naming the folder or shard: no index, an unfinished preparation,
            a newer format version, a missing, truncated or altered shard.
    """

    def __init__(self, folder, verify: bool = True):
        self.folder = Path(folder)
        path = self.folder / INDEX
        if not path.is_file():
            raise ValueError(f"{self.folder} is not a prepared folder: {path} is missing "
                             "(make one with `kzoo prepare`)")
        try:
            self.index = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} is not readable JSON ({error})") from None
        check_format(self.index, path)
        if not self.index.get("complete"):
            raise ValueError(f"{self.folder} is not finished: run the same `kzoo prepare` "
                             "command again to complete it")
        for split in SPLITS:
            for shard in self.index["splits"][split]["shards"]:
                self._check(shard, verify)

    def _check(self, shard: dict, verify: bool) -> None:
        itemsize = np.dtype(self.index["dtype"]).itemsize
        for key, size in (("file", shard["tokens"] * itemsize),
                          ("starts_file", shard["documents"] * 4)):
            path = self.folder / shard[key]
            if not path.is_file():
                raise ValueError(f"shard {path} is missing from the prepared folder")
            if path.stat().st_size != size:
                raise ValueError(f"shard {path} is truncated or altered: {path.stat().st_size:,}"
                                 f" bytes, the index says {size:,}; prepare the folder again")
            if verify and file_sha256(path) != shard[key.replace("file", "sha256")]:
                raise ValueError(f"shard {path} is altered: its sha256 differs from the index; "
                                 "prepare the folder again")

    @property
    def tokenizer_sha256(self) -> str:
        return self.index["tokenizer"]["sha256"]

    def tokenizer(self):
        """The tokenizer the shards were made with (`folder/tokenizer`), checked against the
        index."""
        from kzoo.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(self.folder / TOKENIZER_DIR)
        if tokenizer_identity(tokenizer) != self.tokenizer_sha256:
            raise ValueError(f"{self.folder / TOKENIZER_DIR} is not the tokenizer "
                             f"{self.folder / INDEX} records (sha256 differs)")
        return tokenizer

    def split(self, name: str) -> TokenStream:
        """The `name` split ("train" or "validation") as a `TokenStream`."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; the splits are {list(SPLITS)}")
        shards = self.index["splits"][name]["shards"]
        return TokenStream([self.folder / s["file"] for s in shards],
                           [s["tokens"] for s in shards], self.index["dtype"],
                           [self.folder / s["starts_file"] for s in shards])


def open_prepared(folder, verify: bool = True, must_equal=()):
    """A prepared folder for training: its tokenizer and its two splits, checked.

    Args:
        folder: str | PathLike. the prepared folder.
        verify: bool. check every shard's sha256.
        must_equal: iterable of (tokenizer folder, what it is): tokenizers the folder's must be
            (a resumed run's, a configured one).

    Returns:
        tuple. (tokenizer, train TokenStream, validation TokenStream).

    Raises:
        ValueError: as `PreparedCorpus`; another tokenizer (both named); no validation text.
    """
    from kzoo.tokenizers import load_tokenizer

    corpus = PreparedCorpus(folder, verify=verify)
    tokenizer = corpus.tokenizer()
    for other, where in must_equal:
        check_same_tokenizer(corpus, load_tokenizer(other), where)
    train, validation = corpus.split("train"), corpus.split("validation")
    if not len(validation):
        raise ValueError(f"{corpus.folder} holds no validation documents; prepare it again "
                         "with a larger --validation-fraction")
    return tokenizer, train, validation


def check_same_tokenizer(corpus: PreparedCorpus, tokenizer, where: str) -> None:
    """Refuse a tokenizer other than the one `corpus` was prepared with, naming both."""
    mine, theirs = tokenizer_identity(tokenizer), corpus.index["tokenizer"]
    if mine != corpus.tokenizer_sha256:
        raise ValueError(
            f"{corpus.folder} was prepared with another tokenizer than {where}: "
            f"{theirs.get('kind')} with {theirs.get('vocab_size')} ids (sha256 "
            f"{corpus.tokenizer_sha256[:12]}) against {tokenizer.kind} with "
            f"{tokenizer.vocab_size} ids (sha256 {mine[:12]})")
