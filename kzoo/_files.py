"""Reading a user's text file with one-line errors that name it."""

from pathlib import Path


def read_text(path, missing: str) -> str:
    """The UTF-8 text of `path`.

    Args:
        path: str | PathLike. the file.
        missing: str. the message when it does not exist (it should name the file).

    Raises:
        ValueError: missing, unreadable or not UTF-8, in one line naming the file.

    >>> read_text("/nonexistent.yaml", "no such file")
    Traceback (most recent call last):
    ...
    ValueError: no such file
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(missing)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror})") from None


def file_sha256(path) -> str:
    """The sha256 of the file at `path`, read in 1 MiB blocks (never whole in memory)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path, error=ValueError) -> dict:
    """The JSON object in file `path` (which must exist).

    Args:
        path: str | PathLike. the file.
        error: type. the ValueError subclass to raise, naming the file.

    Raises:
        error: unreadable, not JSON, or not a JSON object, in one line naming the file.
    """
    import json

    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as problem:
        raise error(f"{path} is not readable JSON: {problem}") from None
    if not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object")
    return value
