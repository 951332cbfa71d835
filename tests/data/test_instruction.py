import json

import numpy as np
import pytest

from kzoo.data.instruction import (
    encode_sft,
    get_template,
    read_instruction_records,
    sft_dataset,
)
from kzoo.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


def test_alpaca_and_prompt_completion_records(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(
        json.dumps({"instruction": "Add.", "input": "1+1", "output": "2"}) + "\n"
        + json.dumps({"prompt": "Hi", "completion": "Hello"}) + "\n"
    )
    records = read_instruction_records(path)
    assert records == [{"instruction": "Add.", "input": "1+1", "output": "2"},
                       {"prompt": "Hi", "output": "Hello"}]
    assert get_template("raw").format(records[1]) == "Hi"
    assert get_template("plain").format(records[0]) == "Add.\n1+1\n"


@pytest.mark.parametrize("record, match", [
    ({"instruction": "a", "output": ""}, "record 0: the response .* is empty"),
    ({"instruction": "a"}, r"record 0: missing field\(s\) \['output'\]"),
    ({"instruction": "a", "input": 5, "output": "b"}, "field 'input' must be a string"),
])
def test_bad_records_name_file_and_record(tmp_path, record, match):
    path = tmp_path / "sft.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(ValueError, match=match):
        read_instruction_records(path)


def test_encode_sft_masks_the_response_and_its_end_token():
    out = encode_sft([{"instruction": "Say", "input": "", "output": "hi"}], TOK, max_length=10,
                     template="raw")
    ids, mask = out["token_ids"][0], out["loss_mask"][0]
    assert ids.tolist()[:6] == [ord(c) for c in "Sayhi"] + [TOK.eot_id]
    assert mask.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]


def test_sft_dataset_shifts_targets_and_weights():
    arrays = encode_sft([{"instruction": "Say", "output": "hi"}], TOK, max_length=10,
                        template="raw")
    x, y, w = next(iter(sft_dataset(arrays, batch_size=1, shuffle=False)))
    assert x.shape == y.shape == w.shape == (1, 9)
    np.testing.assert_array_equal(np.asarray(y)[0], arrays["token_ids"][0, 1:])
    # the weight of target t is 1 exactly when target t is a response token
    np.testing.assert_array_equal(np.asarray(w)[0], [0, 0, 1, 1, 1, 0, 0, 0, 0])


def test_long_prompt_skipped_or_strict():
    records = [{"instruction": "x" * 30, "output": "y"}, {"instruction": "a", "output": "b"}]
    out = encode_sft(records, TOK, max_length=16, template="raw")
    assert out["skipped"] == 1 and out["token_ids"].shape == (1, 16)
    with pytest.raises(ValueError, match="record 0: the prompt has 30 tokens"):
        encode_sft(records, TOK, max_length=16, template="raw", strict=True)


def test_real_instruction_file(instruction_data_path):
    records = read_instruction_records(instruction_data_path)
    assert len(records) == 1100
    out = encode_sft(records, TOK, max_length=512)
    assert out["skipped"] == 0 and out["token_ids"].shape == (1100, 512)
    assert (out["loss_mask"].sum(-1) > 1).all()


def test_split_records_is_by_prompt_and_matches_across_files(instruction_data_path,
                                                             preference_data_path):
    from kzoo.data.instruction import split_records
    from kzoo.data.preference import read_preference_records

    sft_train, sft_val = split_records(read_instruction_records(instruction_data_path), 0.1, 0)
    pairs, _ = read_preference_records(preference_data_path)  # 6 identical pairs dropped
    pref_train, pref_val = split_records(pairs, 0.1, 0)
    key = lambda r: (r["instruction"], r["input"])  # noqa: E731
    assert 70 < len(sft_val) < 150
    assert {key(r) for r in pref_val} <= {key(r) for r in sft_val}
    assert not {key(r) for r in pref_val} & {key(r) for r in sft_train}
    other_seed = split_records(pairs, 0.1, 1)[1]
    assert {key(r) for r in other_seed} != {key(r) for r in pref_val}
    with pytest.raises(ValueError, match="validation_fraction"):
        split_records(pairs, 0.0)
