"""`kzoo prepare`: tokenize a corpus of any size into token shards for pre-training.

    kzoo prepare 'web/*.parquet' --out prepared/web --tokenizer bpe --vocab-size 32000
    kzoo prepare books/ --out prepared/books --tokenizer runs/gpt/tokenizer
    kzoo pretrain --config gpt/nano_pydocs_pretrain --set data.prepared=prepared/web

Killed at any moment, the same command continues after the last complete shard. Exit codes:
0 done, 2 bad input (one `error:` line naming the file, row, key or folder). Imports no
TensorFlow unless a source is `tfds:NAME`.

Example:
```python
from kzoo.cli.prepare import main
main(["pydocs", "--out", "/tmp/pydocs-bytes", "--tokenizer", "byte"])   # 0
```
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kzoo prepare", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The folder's format: docs/reference/data.md ('Prepared folders').")
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="text, .jsonl or .parquet files, globs or folders; 'pydocs', "
                        "'pydocs+docstrings' or 'tfds:NAME'")
    parser.add_argument("--out", required=True, help="the prepared folder to write")
    parser.add_argument("--tokenizer", default="bpe",
                        help="a tokenizer folder (kzoo or Hugging Face), or a kind to train "
                        "first on the corpus: bpe (default), char, byte")
    parser.add_argument("--vocab-size", type=int, help="vocabulary of a trained bpe tokenizer "
                        "(default 8192)")
    parser.add_argument("--train-sample-mb", type=float, default=64.0,
                        help="MB of text a trained tokenizer learns from (default 64)")
    parser.add_argument("--shard-tokens", type=int, default=1 << 26,
                        help="tokens per shard (default 67,108,864)")
    parser.add_argument("--validation-fraction", type=float, default=0.01,
                        help="share of documents held out for validation (default 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out choice")
    parser.add_argument("--text-column", default="text",
                        help="the text field of .jsonl records and .parquet rows")
    parser.add_argument("--tfds-split", default="train", help="the split of tfds: sources")
    parser.add_argument("--tfds-data-dir", help="TFDS's data folder")
    parser.add_argument("--tfds-manual-dir", help="the raw files of an offline TFDS build")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="skip and count documents that are not UTF-8 (default: stop)")
    parser.add_argument("--quiet", action="store_true", help="no progress line or summary")
    return parser


def _expand(source: str) -> str:
    """A folder means every file under it."""
    return os.path.join(source, "**", "*") if os.path.isdir(source) else source


def main(argv: list[str] | None = None) -> int:
    """Run `kzoo prepare ARGS...`; returns the exit code (0 done, 2 bad input).

    Args:
        argv: list[str] | None. the arguments after `prepare` (default `sys.argv[1:]`).
    """
    args = _parser().parse_args(argv)
    from kzoo.data.prepare import prepare

    for name in ("vocab_size", "shard_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return _error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.train_sample_mb <= 0:
        return _error(f"--train-sample-mb must be > 0, got {args.train_sample_mb}")
    try:
        prepare([_expand(s) for s in args.sources], args.out, tokenizer=args.tokenizer,
                vocab_size=args.vocab_size,
                train_sample_bytes=int(args.train_sample_mb * (1 << 20)),
                shard_tokens=args.shard_tokens, validation_fraction=args.validation_fraction,
                seed=args.seed, text_column=args.text_column, skip_invalid=args.skip_invalid,
                tfds_split=args.tfds_split, tfds_data_dir=args.tfds_data_dir,
                tfds_manual_dir=args.tfds_manual_dir, progress=False if args.quiet else None)
    except ValueError as error:
        return _error(str(error))
    except KeyboardInterrupt:
        print("\nstopped: finished shards are kept; run the same command to go on",
              file=sys.stderr)
        return 130
    return 0


def _error(message: str) -> int:
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
