"""Unpaired {prompt, completion, label} records: reading, bad input, unpair / pair_up, encoding
(a chosen completion's row equals encode_pairs' chosen row) and KTO's mismatched KL rows."""

import json
import warnings

import numpy as np
import pytest

from kzoo.data.instruction import split_records
from kzoo.data.preference import encode_pairs, read_preference_records
from kzoo.data.unpaired import (
    encode_unpaired,
    pair_up,
    read_unpaired_records,
    unpair,
    unpaired_dataset,
    with_kl_rows,
)
from kzoo.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
USER = {"role": "user", "content": "2+2?"}


def _write(tmp_path, name, records):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def test_forms_are_read_and_counted(tmp_path):
    path = _write(tmp_path, "a.jsonl", [
        {"prompt": "Q?", "completion": "yes", "label": True},
        {"instruction": "Add.", "input": "1+1", "completion": "3", "label": False},
        {"instruction": "Greet.", "completion": "Hi", "label": True},
        {"prompt": [USER], "completion": [{"role": "assistant", "content": "4"}],
         "label": False},
        {"prompt": "Q?", "completion": "  ", "label": True},
    ])
    records, counts = read_unpaired_records(path)
    assert records[0] == {"prompt": "Q?", "completion": "yes", "label": True}
    assert records[2] == {"instruction": "Greet.", "input": "", "completion": "Hi",
                          "label": True}
    assert records[3]["prompt"] == [USER] and records[3]["label"] is False
    assert counts == {"read": 5, "kept": 4, "empty": 1, "desirable": 2, "undesirable": 2}
    with pytest.raises(ValueError, match=r"a.jsonl line 5: the completion is empty"):
        read_unpaired_records(path, strict=True)


@pytest.mark.parametrize("record, match", [
    ({"prompt": "Q", "completion": "A", "label": 1},
     r"b.json record 1: field 'label' must be a bool \(true: thumbs up, false: thumbs down\), "
     r"got int 1"),
    ({"prompt": "Q", "completion": "A", "label": "true"}, "got str 'true'"),
    ({"prompt": "Q", "label": True}, r"record 1: missing field\(s\) \['completion'\]"),
    ({"prompt": "Q", "completion": "A"}, r"record 1: missing field\(s\) \['label'\]"),
    ({"prompt": "Q", "chosen": "A", "rejected": "B"}, "set data.unpair: true"),
    ({"prompt": "Q", "completion": 4, "label": True}, "field 'completion' must be a string"),
    ({"prompt": [USER], "completion": [{"role": "robot", "content": "4"}], "label": True},
     r"completion\[0\]: unknown role 'robot'"),
    ([1, 2], "record 1: expected a JSON object, got list"),
])
def test_bad_records_name_the_file_and_record(tmp_path, record, match):
    path = _write(tmp_path, "b.json", [{"prompt": "Q", "completion": "A", "label": True},
                                       record])
    with pytest.raises(ValueError, match=match):
        read_unpaired_records(path)


def test_empty_file_and_all_empty(tmp_path):
    with pytest.raises(ValueError, match=r"e.json holds no unpaired records \(0 records\)"):
        read_unpaired_records(_write(tmp_path, "e.json", []))
    path = _write(tmp_path, "f.json", [{"prompt": "Q", "completion": " ", "label": True}])
    with pytest.raises(ValueError, match="no usable records: all 1 completions are empty"):
        read_unpaired_records(path)


@pytest.mark.parametrize("label, kind", [(True, "thumbs up"), (False, "thumbs down")])
def test_one_sided_labels_warn_but_read(tmp_path, label, kind):
    path = _write(tmp_path, "s.json", [{"prompt": f"Q{i}", "completion": "A", "label": label}
                                       for i in range(3)])
    with pytest.warns(UserWarning, match=f"all 3 records have label .*{kind}.*KTO trains"):
        records, _ = read_unpaired_records(path)
    assert len(records) == 3
    balanced = _write(tmp_path, "t.json", [{"prompt": "Q", "completion": "A", "label": True},
                                           {"prompt": "Q", "completion": "B", "label": False}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_unpaired_records(balanced)


PAIRS = [{"prompt": f"{a}+{a}=", "chosen": str(2 * a), "rejected": str(2 * a + 1)}
         for a in range(10)]


def test_unpair_and_pair_up_round_trip():
    records = unpair(PAIRS, seed=0)
    assert len(records) == 20 and sum(r["label"] for r in records) == 10
    assert records == unpair(PAIRS, seed=0) and records != unpair(PAIRS, seed=1)
    in_order = [r["completion"] for r in records]
    assert in_order != [c for p in PAIRS for c in (p["chosen"], p["rejected"])]  # shuffled
    ups = {(r["prompt"], r["completion"]) for r in records if r["label"]}
    assert ups == {(p["prompt"], p["chosen"]) for p in PAIRS}
    key = lambda p: p["prompt"]  # noqa: E731
    assert sorted(pair_up(records), key=key) == sorted(PAIRS, key=key)
    # An unmatched completion is left out.
    assert pair_up([{"prompt": "a", "completion": "x", "label": True}]) == []


def test_split_of_unpaired_records_follows_the_pairs_split(preference_data_path):
    pairs, _ = read_preference_records(preference_data_path)
    train_pairs, val_pairs = split_records(pairs, 0.1, 0)
    train, val = split_records(unpair(pairs, seed=3), 0.1, 0)
    instructions = lambda rs: {(r["instruction"], r["input"]) for r in rs}  # noqa: E731
    assert instructions(val) == instructions(val_pairs)
    assert instructions(train) == instructions(train_pairs)
    assert len(val) == 2 * len(val_pairs)


@pytest.mark.parametrize("template, pair", [
    ("plain", {"instruction": "Add.", "input": "1+1", "chosen": "2", "rejected": "three"}),
    ("chat", {"prompt": "2+2?", "chosen": "4", "rejected": "five"}),
    ("alpaca", {"prompt": [USER], "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "five"}]}),
])
@pytest.mark.parametrize("max_length, max_prompt_length", [(128, None), (40, 12)])
def test_rows_equal_encode_pairs_rows(template, pair, max_length, max_prompt_length):
    records = unpair([pair], seed=0)
    arrays = encode_unpaired(records, TOK, max_length, template, max_prompt_length)
    expected = encode_pairs([pair], TOK, max_length, template, max_prompt_length)
    for i, record in enumerate(records):
        j = 0 if record["label"] else 1
        np.testing.assert_array_equal(arrays["token_ids"][i], expected["token_ids"][0, j])
        np.testing.assert_array_equal(arrays["loss_mask"][i], expected["loss_mask"][0, j])
        assert arrays["labels"][i] == record["label"]


def test_too_long_prompts_are_skipped_or_strict():
    records = [{"prompt": "x" * 30, "completion": "y", "label": True},
               {"prompt": "z", "completion": "y", "label": False}]
    arrays = encode_unpaired(records, TOK, 16, "raw")
    assert arrays["skipped"] == 1 and arrays["labels"].tolist() == [False]
    with pytest.raises(ValueError, match="record 0: the prompt has 30 tokens"):
        encode_unpaired(records, TOK, 16, "raw", strict=True)


def _decode(ids, mask):
    ids, mask = np.asarray(ids), np.asarray(mask)
    prompt = bytes(ids[mask == 0][: np.flatnonzero(mask)[0]].tolist()).decode()
    completion = bytes([t for t in ids[mask > 0] if t < 256]).decode()
    return prompt, completion


@pytest.mark.parametrize("n, batch_size", [(10, 4), (9, 4), (8, 8), (3, 2)])
def test_kl_rows_rotate_completions_within_each_batch(n, batch_size):
    records = [{"prompt": f"P{i}:", "completion": f"c{i}", "label": i % 2 == 0}
               for i in range(n)]
    arrays = with_kl_rows(encode_unpaired(records, TOK, 32, "raw"), batch_size, seed=5)
    rows = [_decode(i, m) for i, m in zip(arrays["token_ids"], arrays["loss_mask"])]
    kl = [_decode(i, m) for i, m in zip(arrays["kl_token_ids"], arrays["kl_loss_mask"])]
    assert sorted(p for p, _ in rows) == sorted(f"P{i}:" for i in range(n))  # all kept
    assert [p for p, _ in kl] == [p for p, _ in rows]  # each KL row keeps its row's prompt
    for start in range(0, n, batch_size):
        batch = rows[start: start + batch_size]
        if len(batch) == 1:  # a last batch of one borrows the row before it
            assert kl[start][1] == rows[start - 1][1]
            continue
        completions = [c for _, c in batch]
        # TRL's rotation: (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1})
        assert [c for _, c in kl[start: start + batch_size]] == \
            completions[-1:] + completions[:-1]
    labels = {r["prompt"]: r["label"] for r in records}  # rows move with their own labels
    assert [labels[p] for p, _ in rows] == arrays["labels"].tolist()


def test_kl_rows_are_cut_to_max_length_and_keep_the_prompt_cut():
    records = [{"prompt": "A" * 10, "completion": "short", "label": True},
               {"prompt": "B", "completion": "x" * 40, "label": False}]
    arrays = with_kl_rows(encode_unpaired(records, TOK, 20, "raw", max_prompt_length=6), 2,
                          seed=None)
    # Row 0's KL row: 6 prompt tokens + row 1's completion cut to the remaining 14.
    assert arrays["kl_loss_mask"][0].tolist() == [0.0] * 6 + [1.0] * 14
    assert arrays["kl_loss_mask"][1, :7].tolist() == [0.0] + [1.0] * 6  # "short" + eot
    assert (arrays["kl_token_ids"][1, 7:] == TOK.eot_id).all()


@pytest.mark.parametrize("n, batch_size", [(5, 1), (1, 8)])
def test_batch_of_one_has_no_kl_pair_and_says_how_to_fix(n, batch_size):
    records = [{"prompt": f"P{i}", "completion": "c", "label": True} for i in range(n)]
    with pytest.raises(ValueError, match=r"needs batches of at least 2 rows; got "
                       rf"batch_size={batch_size} and {n} row\(s\). Raise train.batch_size.*"
                       "apo_zero_unpaired"):
        with_kl_rows(encode_unpaired(records, TOK, 16, "raw"), batch_size)


def test_dataset_keeps_row_order_and_keys():
    records = [{"prompt": f"P{i}", "completion": "c", "label": bool(i % 2)} for i in range(5)]
    arrays = with_kl_rows(encode_unpaired(records, TOK, 16, "raw"), 2, seed=1)
    batches = list(unpaired_dataset(arrays, 2).as_numpy_iterator())
    assert sorted(batches[0]) == ["kl_loss_mask", "kl_token_ids", "labels", "lengths",
                                  "loss_mask", "token_ids"]
    np.testing.assert_array_equal(np.concatenate([b["kl_token_ids"] for b in batches]),
                                  arrays["kl_token_ids"])
    with pytest.raises(ValueError, match="no unpaired rows to batch"):
        unpaired_dataset(encode_unpaired([], TOK, 16, "raw"), 2)
