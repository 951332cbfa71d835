"""tf.data pipeline: packing, shifted targets, determinism, resume, sharding, bad input."""

import numpy as np
import pytest
import tensorflow as tf

from kzoo.data import check_token_counts, eval_dataset, split_tokens, train_dataset
from kzoo.tokenizers import CharTokenizer

TOKENS = np.arange(1, 802, dtype=np.int32)  # 801 tokens -> 100 blocks of 8 (+1 shared)


def batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_documents_are_packed_with_end_of_text():
    tok = CharTokenizer.train(["ab", "ba"])
    ids = tok.encode_documents(["ab", "ba"])
    assert ids.tolist() == [0, 1, tok.eot_id, 1, 0, tok.eot_id]


def test_targets_are_inputs_shifted_by_one():
    (x, y), = batches(train_dataset(TOKENS, 8, 4, seed=0), 1)
    assert x.shape == y.shape == (4, 8)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(y[:, -1], x[:, -1] + 1)  # consecutive tokens


def test_each_pass_visits_every_block_once_on_a_shifted_grid():
    # 801 tokens, block 8: 99 blocks per pass (one block of slack for the grid offset).
    xs = np.concatenate([x for x, _ in batches(train_dataset(TOKENS, 8, 1, seed=3), 99 * 3)])
    passes = [xs[i * 99:(i + 1) * 99, 0] for i in range(3)]
    offsets = set()
    for starts in passes:
        offset = int(starts.min()) - 1  # token ids are positions + 1
        offsets.add(offset)
        assert 0 <= offset < 8
        assert sorted(starts.tolist()) == list(range(1 + offset, 1 + offset + 99 * 8, 8))
        assert starts.tolist() != sorted(starts.tolist())  # shuffled
    assert len(offsets) > 1 or passes[0].tolist() != passes[1].tolist()  # passes differ


def test_same_seed_same_batches_other_seed_differs():
    a = batches(train_dataset(TOKENS, 8, 4, seed=1), 5)
    b = batches(train_dataset(TOKENS, 8, 4, seed=1), 5)
    c = batches(train_dataset(TOKENS, 8, 4, seed=2), 5)
    assert all((p[0] == q[0]).all() for p, q in zip(a, b))
    assert not all((p[0] == q[0]).all() for p, q in zip(a, c))


def test_start_step_resumes_the_same_stream():
    full = batches(train_dataset(TOKENS, 8, 4, seed=1), 40)
    resumed = batches(train_dataset(TOKENS, 8, 4, seed=1, start_step=30), 10)
    for (x, _), (xr, _) in zip(full[30:], resumed):
        np.testing.assert_array_equal(x, xr)


def test_input_pipelines_split_each_global_batch():
    full = batches(train_dataset(TOKENS, 8, 4, seed=1), 3)
    parts = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                         num_replicas_in_sync=2)
        parts.append(batches(train_dataset(TOKENS, 8, 4, seed=1, input_context=ctx), 3))
    for step in range(3):
        joined = np.concatenate([parts[0][step][0], parts[1][step][0]])
        np.testing.assert_array_equal(joined, full[step][0])


def test_eval_dataset_is_finite_and_repeatable():
    ds = eval_dataset(TOKENS[:50], 8, 3, num_batches=7, seed=0)
    first, second = batches(ds, 100), batches(ds, 100)
    assert len(first) == 7
    assert all((a[0] == b[0]).all() for a, b in zip(first, second))


def test_split_and_count_checks():
    train, val = split_tokens(TOKENS, 0.1)
    assert len(train) + len(val) == len(TOKENS) and val[0] == train[-1] + 1
    with pytest.raises(ValueError, match="validation_fraction"):
        split_tokens(TOKENS, 1.5)
    with pytest.raises(ValueError, match="fewer than one batch"):
        check_token_counts(TOKENS[:20], TOKENS, block_size=8, batch_size=4)
    with pytest.raises(ValueError, match="validation data has 3 tokens"):
        check_token_counts(TOKENS, TOKENS[:3], block_size=8, batch_size=4)
