"""tf.data input pipeline for next-token prediction on a packed token stream.

Documents are tokenized once, joined with an end-of-text id (`Tokenizer.encode_documents`) and
split into train/validation token arrays. The training stream cuts the train tokens into
non-overlapping blocks of `block_size + 1` tokens (inputs and shifted targets share one token),
visits the blocks in a fresh pseudo-random order every pass (each pass also shifts the block
grid by a random offset below `block_size`, so passes differ), batches and prefetches.

The order is a pure function of `(seed, global sample index)` through
`tf.random.experimental.index_shuffle`, so:
- the same seed gives the same batches on every run;
- resuming at step `s` starts the stream at sample `s * global_batch`, no replay needed;
- under tf.distribute every input pipeline takes its slice of the same global batch, so the
  union over replicas equals the single-device batch.

`tokens` is an in-memory array or a `kzoo.data.shards.TokenStream` over a prepared folder's
memory-mapped shards: then only the windows of each batch are read (`tf.numpy_function`). With
`packing="bos_aligned"` every row starts at a document start (nanochat's rows begin with BOS):
sample i is document `index_shuffle(i)` of its pass, read from its first token on.

Example:

>>> import numpy as np
>>> from kzoo.data import train_dataset
>>> ds = train_dataset(np.arange(1000, dtype="int32"), block_size=8, batch_size=4, seed=0)
>>> x, y = next(iter(ds))
>>> x.shape, bool((x[:, 1:] == y[:, :-1]).numpy().all())
(TensorShape([4, 8]), True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

# TensorFlow, imported when a pipeline is built (quietly, on every backend): tf.data is the input
# path on every Keras backend, and `import kzoo.data` on JAX or PyTorch must not pay for it.
from kzoo._quiet import tensorflow as _tf

if TYPE_CHECKING:
    import tensorflow as tf


def split_tokens(tokens: np.ndarray, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split a token stream: the first `1 - validation_fraction` trains, the rest validates."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
    cut = int(round(len(tokens) * (1.0 - validation_fraction)))
    return tokens[:cut], tokens[cut:]


def check_token_counts(
    train_tokens: np.ndarray, val_tokens: np.ndarray, block_size: int, batch_size: int
) -> None:
    """Raise a ValueError when the streams are too short for one batch of blocks."""
    need = batch_size * block_size + 1
    if len(train_tokens) < need:
        raise ValueError(
            f"the training data has {len(train_tokens)} tokens, fewer than one batch needs "
            f"(batch_size {batch_size} x block_size {block_size} + 1 = {need})"
        )
    if len(val_tokens) < block_size + 1:
        raise ValueError(
            f"the validation data has {len(val_tokens)} tokens, fewer than one block needs "
            f"({block_size + 1}); use more text or a larger validation fraction"
        )


def _pipeline_sample_ids(
    start_step: int, global_batch: int, pipeline_id: int, num_pipelines: int, num_steps=None
) -> tf.data.Dataset:
    """Global sample indices that input pipeline `pipeline_id` must produce, in order.

    Pipeline p takes the contiguous slice [p * B/P, (p + 1) * B/P) of every global batch B.
    """
    tf = _tf()
    if global_batch % num_pipelines:
        raise ValueError(
            f"batch_size {global_batch} must be divisible by the number of workers {num_pipelines}"
        )
    per_pipeline = global_batch // num_pipelines
    start = start_step * per_pipeline
    stop = None if num_steps is None else (start_step + num_steps) * per_pipeline
    ids = tf.data.Dataset.range(start, stop) if stop is not None else tf.data.Dataset.range(
        start, np.iinfo(np.int64).max
    )
    return ids.map(
        lambda i: (i // per_pipeline) * global_batch + pipeline_id * per_pipeline
        + i % per_pipeline
    )


def _layout(batch_size: int, input_context) -> tuple[int, int, int]:
    """(pipeline id, number of pipelines, per-replica batch); one pipeline without a context."""
    if input_context is None:
        return 0, 1, batch_size
    return (input_context.input_pipeline_id, input_context.num_input_pipelines,
            input_context.get_per_replica_batch_size(batch_size))


def _windows(tokens, block_size: int):
    """Map a batch of window starts (batch,) to (inputs, targets), each (batch, block_size)."""
    tf = _tf()
    if not hasattr(tokens, "windows"):  # an in-memory stream (a TokenStream reads its own)
        tokens = tf.constant(np.asarray(tokens, np.int32))

    def read(starts):
        if isinstance(tokens, tf.Tensor):
            offsets = starts[:, None] + tf.range(block_size + 1, dtype=tf.int64)[None, :]
            return tf.gather(tokens, offsets)
        window = tf.numpy_function(lambda s: tokens.windows(s, block_size + 1), [starts],
                                   tf.int32, stateful=False)
        return tf.ensure_shape(window, [None, block_size + 1])

    def gather(starts):
        window = read(starts)  # (batch, block_size + 1)
        return window[:, :-1], window[:, 1:]

    return gather


PACKINGS = ("plain", "bos_aligned")


def _aligned_starts(tokens, block_size: int, doc_starts) -> np.ndarray:
    """Document starts that leave room for a whole window: BOS-aligned packing's rows."""
    if doc_starts is None:
        if not hasattr(tokens, "document_starts"):
            raise ValueError("bos_aligned packing of an array needs its doc_starts")
        doc_starts = tokens.document_starts()
    doc_starts = np.asarray(doc_starts, np.int64)
    fits = doc_starts[doc_starts + block_size + 1 <= len(tokens)]
    if len(fits) < 1:
        raise ValueError(f"no document starts {block_size + 1} tokens before the end of the "
                         "data: too little text for bos_aligned packing")
    return fits


def _options() -> tf.data.Options:
    tf = _tf()
    options = tf.data.Options()
    options.deterministic = True
    # Each pipeline already reads only its slice (see _pipeline_sample_ids).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def train_dataset(
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    packing: str = "plain",
    doc_starts: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Endless shuffled (inputs, targets) batches of packed blocks.

    Args:
        tokens: np.ndarray. int token stream (documents joined with the end-of-text id).
        block_size: int. tokens per training sequence.
        batch_size: int. global batch size (all replicas and workers together).
        seed: int. shuffling seed; the same seed gives the same batches.
        start_step: int. first step to produce (for resuming).
        input_context: tf.distribute.InputContext | None. set by
            `strategy.distribute_datasets_from_function`; batches are then per replica.
        packing: str. "plain" (windows anywhere) or "bos_aligned" (each row starts a document).
        doc_starts: np.ndarray | None. document start offsets, for "bos_aligned" packing of an
            in-memory array (a `TokenStream` knows its own).
    """
    tf = _tf()
    if packing not in PACKINGS:
        raise ValueError(f"unknown packing {packing!r}; the packings are {list(PACKINGS)}")
    aligned = packing == "bos_aligned"
    if aligned:
        starts = tf.constant(_aligned_starts(tokens, block_size, doc_starts))
        num_blocks = int(starts.shape[0])
    else:
        # One block_size of slack, so every pass can shift its block grid (see block_start).
        num_blocks = (len(tokens) - 1 - block_size) // block_size
    if num_blocks < 1:
        raise ValueError(f"{len(tokens)} tokens are too few for one block of {block_size + 1}")
    pipeline_id, num_pipelines, per_replica = _layout(batch_size, input_context)
    n = tf.constant(num_blocks, tf.int64)
    seed = int(seed)

    def block_start(sample):
        # Pass `sample // n` over the data uses its own permutation of the blocks and its own
        # grid offset in [0, block_size), so a second pass does not repeat the same windows.
        epoch = sample // n
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        block = tf.random.experimental.index_shuffle(sample % n, key, n - 1)
        if aligned:  # a pass visits every document start once, in its own order
            return tf.gather(starts, block)
        offset = tf.random.stateless_uniform(
            [], key, minval=0, maxval=block_size, dtype=tf.int64
        )
        return offset + block * block_size

    ids = _pipeline_sample_ids(start_step, batch_size, pipeline_id, num_pipelines)
    ds = ids.map(block_start).batch(per_replica, drop_remainder=True)
    ds = ds.map(_windows(tokens, block_size), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_dataset(
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    num_batches: int,
    seed: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """`num_batches` fixed batches of windows at seeded random offsets (nanoGPT's estimate).

    Windows may overlap, so a small validation split still gives many batches. The same
    arguments give the same windows, so validation losses are comparable across evaluations.
    Arguments as in `train_dataset`; `num_batches`: int. global batches to produce.
    """
    tf = _tf()
    if len(tokens) < block_size + 1:
        raise ValueError(f"{len(tokens)} validation tokens are too few for one block")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - block_size, size=num_batches * batch_size)
    pipeline_id, num_pipelines, per_replica = _layout(batch_size, input_context)
    start_tensor = tf.constant(starts, tf.int64)
    ids = _pipeline_sample_ids(0, batch_size, pipeline_id, num_pipelines, num_steps=num_batches)
    ds = ids.map(lambda i: tf.gather(start_tensor, i)).batch(per_replica, drop_remainder=True)
    ds = ds.map(_windows(tokens, block_size)).cache()
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_windows(tokens: np.ndarray, block_size: int, batch_size: int, num_batches: int,
                 seed: int, input_context=None) -> tf.data.Dataset:
    """`eval_dataset`'s windows held as two in-memory tensors: a finite data set whose
    iterator costs nothing to make or drop, for a validation run at every interval.

    Arguments as in `eval_dataset`: with an `input_context`, this pipeline's slice of every
    batch (one process of several feeding one Keras distribution), not a tf.distribute one.
    """
    tf = _tf()
    batches = list(eval_dataset(tokens, block_size, batch_size, num_batches, seed,
                                input_context=input_context))
    rows = _layout(batch_size, input_context)[2]
    inputs = tf.concat([x for x, _ in batches], axis=0)  # (num_batches * rows, block)
    targets = tf.concat([y for _, y in batches], axis=0)
    return tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(rows)
