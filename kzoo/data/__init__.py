"""Text data: sources (embedded pydocs, files, TFDS) and the tf.data next-token pipeline;
records of JSON, JSONL and Parquet files, and conversations rendered with a chat template (SFT
and preference data: `kzoo.data.instruction`, `kzoo.data.preference`)."""

from kzoo.data.conversation import encode_conversation
from kzoo.data.pipeline import check_token_counts, eval_dataset, split_tokens, train_dataset
from kzoo.data.records import read_records
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
    "encode_conversation",
    "eval_dataset",
    "file_documents",
    "load_documents",
    "pydocs_documents",
    "read_records",
    "read_text_file",
    "split_tokens",
    "tfds_documents",
    "train_dataset",
]
