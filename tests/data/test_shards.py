"""The streaming loader: a prepared folder's memory-mapped shards give the batches the in-memory
stream gives (same seed, same global step), for plain and BOS-aligned packing, resumed and
sliced over input pipelines."""

import json

import numpy as np
import pytest

from kzoo.data.pipeline import eval_dataset, train_dataset
from kzoo.data.prepare import prepare
from kzoo.data.shards import PreparedCorpus, TokenStream

DOCS = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(3 + i % 40)) for i in range(600)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    (tmp / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    prepare([str(tmp / "a.jsonl")], tmp / "out", tokenizer="char", shard_tokens=3000,
            validation_fraction=0.1, seed=5, progress=False)
    return tmp / "out"


@pytest.fixture(scope="module")
def streams(folder):
    corpus = PreparedCorpus(folder)
    train = corpus.split("train")
    return corpus, train, train.read(0, len(train))  # the stream and its in-memory copy


def batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_windows_across_shard_boundaries_are_the_array_slices(streams):
    _, train, tokens = streams
    assert len(train.files) > 5
    bounds = train.bounds[1:-1]
    starts = np.concatenate([bounds - 5, bounds - 1, [0, len(tokens) - 40]])
    np.testing.assert_array_equal(train.windows(starts, 40),
                                  np.stack([tokens[s:s + 40] for s in starts]))
    with pytest.raises(IndexError, match="outside"):
        train.read(len(tokens) - 3, 10)


@pytest.mark.parametrize("packing", ["plain", "bos_aligned"])
def test_streamed_batches_equal_the_in_memory_ones_and_resume_at_a_step(streams, packing):
    corpus, train, tokens = streams
    eot = corpus.index["tokenizer"]["eot_id"]
    starts = np.concatenate([[0], np.flatnonzero(tokens == eot) + 1])
    np.testing.assert_array_equal(train.document_starts(), starts[:-1])
    kwargs = dict(block_size=24, batch_size=8, seed=11, packing=packing)
    memory = batches(train_dataset(tokens, doc_starts=starts[:-1], **kwargs), 12)
    stream = batches(train_dataset(train, **kwargs), 12)
    for (xm, ym), (xs, ys) in zip(memory, stream):
        np.testing.assert_array_equal(xs, xm)
        np.testing.assert_array_equal(ys, ym)
        np.testing.assert_array_equal(xs[:, 1:], ys[:, :-1])
    if packing == "bos_aligned":  # every row starts a document
        rows = np.concatenate([x for x, _ in stream])
        firsts = {tuple(tokens[s:s + 24]) for s in starts[:-1]}
        assert all(tuple(r) in firsts for r in rows)
    resumed = batches(train_dataset(train, start_step=7, **kwargs), 5)
    for (x, _), (xr, _) in zip(stream[7:], resumed):
        np.testing.assert_array_equal(xr, x)


def test_each_input_pipeline_reads_its_slice_of_the_global_batch(streams):
    import tensorflow as tf

    _, train, _ = streams
    whole = batches(train_dataset(train, 16, 8, seed=3), 4)
    parts = [batches(train_dataset(train, 16, 8, seed=3, input_context=tf.distribute.
                                   InputContext(2, pipeline, 2)), 4) for pipeline in (0, 1)]
    for step, (x, _) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([parts[0][step][0], parts[1][step][0]]), x)


def test_validation_windows_equal_the_in_memory_ones(streams):
    corpus, _, _ = streams
    val = corpus.split("validation")
    assert len(val) > 100
    memory = batches(eval_dataset(val.read(0, len(val)), 16, 4, 3, seed=2), 3)
    stream = batches(eval_dataset(val, 16, 4, 3, seed=2), 3)
    for (xm, _), (xs, _) in zip(memory, stream):
        np.testing.assert_array_equal(xs, xm)


def test_a_stream_is_read_through_memory_maps_not_loaded(streams):
    _, train, _ = streams
    fresh = TokenStream(train.files, train.counts, "uint16", train.starts_files)
    fresh.windows([0, len(fresh) - 10], 10)
    assert set(fresh._maps) == {0, len(train.files) - 1}  # only the shards read were mapped
    assert all(isinstance(m, np.memmap) for m in fresh._maps.values())
