"""Text data: sources (embedded pydocs, files, TFDS) and the tf.data next-token pipeline."""

from kzoo.data.pipeline import check_token_counts, eval_dataset, split_tokens, train_dataset
from kzoo.data.sources import (
    docstring_documents,
    file_documents,
    load_documents,
    pydocs_documents,
    read_text_file,
    tfds_documents,
)

__all__ = [
    "check_token_counts",
    "docstring_documents",
    "eval_dataset",
    "file_documents",
    "load_documents",
    "pydocs_documents",
    "read_text_file",
    "split_tokens",
    "tfds_documents",
    "train_dataset",
]
