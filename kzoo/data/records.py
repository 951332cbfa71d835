"""Reading data records from `.json`, `.jsonl` and `.parquet` files, each with its location.

Every record comes with where it was found ("file.json record 3", "file.jsonl line 4",
"file.parquet row 2"), which goes into every error message about it. Parquet is how Hugging Face
data sets are stored; it is read with pyarrow as plain data (no code runs).

Example:
```python
import json
from kzoo.data.records import read_records
with open("pairs.json", "w") as f:
    json.dump([{"prompt": "2+2=", "completion": "4"}], f)
read_records("pairs.json")   # [('pairs.json record 0', {'prompt': '2+2=', 'completion': '4'})]
```
"""

from __future__ import annotations

import json
from pathlib import Path

from kzoo._files import read_text

SUFFIXES = (".json", ".jsonl", ".parquet")


def _read_parquet(path: Path) -> list[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ValueError(f"Data file {path} does not exist.")
    try:
        # pyarrow >= 14.0.1 refuses the pickled extension types an older file could carry.
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable Parquet file "
                         f"({' '.join(str(error).split())[:200]})") from None
    # A Parquet column exists in every row; null marks a field the record does not have.
    return [(f"{path} row {i}", {k: v for k, v in row.items() if v is not None})
            for i, row in enumerate(rows)]


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """Read a `.json` list of objects, a `.jsonl` file or a `.parquet` table.

    Args:
        path: str | Path. the data file; its suffix picks the format.

    Returns:
        list[tuple[str, object]]. (location, record) pairs; the location names the file and
        the record (JSON, 0-based), line (JSONL, 1-based) or row (Parquet, 0-based). Parquet
        nulls are dropped from the record (a missing field).

    Raises:
        ValueError: one line naming the file (and line): missing, unreadable, invalid JSON,
            damaged Parquet, or an unknown suffix.

    Example:
    ```python
    from kzoo.data.records import read_records
    rows = read_records("train-00000-of-00001.parquet")   # [("... row 0", {...}), ...]
    ```
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: expected a .json or .jsonl file (or .parquet), got suffix "
                         f"{path.suffix!r}")
    text = read_text(path, f"Data file {path} does not exist.")
    if path.suffix == ".jsonl":
        out = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append((f"{path} line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number}: invalid JSON ({error.msg})") from None
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} line {error.lineno} column {error.colno}: invalid JSON ({error.msg})"
        ) from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return [(f"{path} record {i}", record) for i, record in enumerate(data)]


def check_text_fields(where: str, record, required: tuple[str, ...],
                      optional: tuple[str, ...] = ()) -> None:
    """Raise a ValueError naming `where` unless `record` is a dict with string fields.

    Example:
    ```python
    from kzoo.data.records import check_text_fields
    check_text_fields("a.json record 0", {"prompt": "Hi", "completion": "Yo"},
                      ("prompt", "completion"))
    ```
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in required if k not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; has {sorted(record)}")
    for key in required + optional:
        if key in record and not isinstance(record[key], str):
            raise ValueError(
                f"{where}: field {key!r} must be a string, got {type(record[key]).__name__}"
            )
