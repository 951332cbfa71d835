"""Text sources: the embedded Python documentation corpus, local files and TFDS data sets.

Every source returns a list of documents (`str`). Documents are later joined with an
end-of-text token, so document boundaries survive packing.

A source is named by one string:

- `"pydocs"`: the English prose that ships with CPython (`pydoc_data.topics`, ~465 KB).
  Present on every machine, no download.
- `"pydocs+docstrings"`: the same plus the docstrings of a fixed list of standard-library
  modules (~1 MB in total).
- `"tfds:NAME"`: any TensorFlow Datasets text data set, through the real `tensorflow_datasets`
  API; `data_dir` and `manual_dir` let an offline user point it at a local copy.
- anything else: a local file path or a glob (`"books/*.txt"`), one document per file.

Example:

>>> from kzoo.data import load_documents
>>> docs = load_documents("pydocs")
>>> len(docs) > 50 and "assignment" in " ".join(docs)
True
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

# Standard-library modules whose docstrings extend `pydocs+docstrings`. A fixed list keeps the
# corpus identical across machines that have the same Python version.
_DOCSTRING_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar collections contextlib copy csv dataclasses "
    "datetime decimal difflib email enum fractions functools gettext glob gzip hashlib heapq hmac "
    "html http.client inspect io ipaddress itertools json logging mailbox math multiprocessing "
    "numbers operator optparse os pathlib pickle pprint queue random re sched secrets shelve "
    "shlex shutil smtplib socket sqlite3 statistics string struct subprocess tarfile tempfile "
    "textwrap threading timeit tokenize traceback turtle typing unittest urllib.parse uuid "
    "warnings weakref xml.dom.minidom zipfile"
).split()


def pydocs_documents() -> list[str]:
    """Return the CPython documentation topics (`pydoc_data.topics`), one document each.

    Sorted by topic name so the corpus is deterministic.
    """
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics) if topics[name].strip()]


def docstring_documents() -> list[str]:
    """Return the docstrings of a fixed list of standard-library modules, one per module."""
    import importlib
    import inspect

    documents = []
    for module_name in _DOCSTRING_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # e.g. a Python built without sqlite3 or tkinter.
            continue
        parts = [inspect.getdoc(module) or ""]
        for name in sorted(vars(module)):
            obj = getattr(module, name)
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc:
                parts.append(f"{name}\n\n{doc}")
        text = "\n\n".join(p for p in parts if p).strip()
        if text:
            documents.append(text)
    return documents


def read_text_file(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file; a decoding error names the file and the byte offset."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text: invalid byte 0x{data[error.start]:02x} at byte offset "
            f"{error.start} ({error.reason})"
        ) from None


def file_documents(pattern: str) -> list[str]:
    """Return one document per file matching `pattern` (a path or a glob), sorted by path."""
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                   if os.path.isfile(p))
    if not paths:
        raise ValueError(
            f"data source {pattern!r} matches no file; expected 'pydocs', "
            "'pydocs+docstrings', 'tfds:NAME' or a path/glob of UTF-8 text files"
        )
    return [read_text_file(p) for p in paths]


def tfds_documents(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    manual_dir: str | None = None,
    text_key: str = "text",
) -> list[str]:
    """Return the `text_key` feature of every example of a TFDS split, one document each.

    Args:
        name: str. registered TFDS builder name, e.g. `"tiny_shakespeare"`.
        split: str. TFDS split expression, e.g. `"train"` or `"validation+test"`.
        data_dir: str | None. where TFDS keeps prepared data (TFDS default when None).
        manual_dir: str | None. folder holding the raw downloaded files, for offline use
            (for `tiny_shakespeare`: `manual_dir/input.txt`).
        text_key: str. feature holding the text.
    """
    from kzoo._quiet import import_tensorflow_quietly

    import_tensorflow_quietly(any_backend=True)  # TFDS imports it, loudly
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises its own DatasetNotFoundError type.
        raise ValueError(f"unknown TFDS data set {name!r}: {error}") from None
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=download_config)
    if text_key not in builder.info.features:
        raise ValueError(
            f"TFDS data set {name!r} has no feature {text_key!r}; "
            f"features are {sorted(builder.info.features)}"
        )
    documents = []
    for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
        value = example[text_key]
        documents.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    return documents


def load_documents(
    source: str,
    split: str = "train",
    data_dir: str | None = None,
    manual_dir: str | None = None,
) -> list[str]:
    """Load the documents of a named source (see the module docstring for the names).

    Args:
        source: str. `"pydocs"`, `"pydocs+docstrings"`, `"tfds:NAME"` or a path/glob.
        split: str. TFDS split (TFDS sources only).
        data_dir: str | None. TFDS data directory (TFDS sources only).
        manual_dir: str | None. TFDS manual download directory (TFDS sources only).

    Raises:
        ValueError: the source is unknown, matches no file, is not UTF-8 or holds no text.
    """
    if source == "pydocs":
        documents = pydocs_documents()
    elif source == "pydocs+docstrings":
        documents = pydocs_documents() + docstring_documents()
    elif source.startswith("tfds:"):
        documents = tfds_documents(source[5:], split, data_dir, manual_dir)
    else:
        documents = file_documents(source)
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise ValueError(f"data source {source!r} (split {split!r}) holds no text: empty corpus")
    return documents
