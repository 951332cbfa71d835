"""Empty data and data whose every record is skipped: one ValueError line naming the file and
why, never TensorFlow's `buffer_size` error from an empty shuffle."""

import json

import pytest

from kzoo.data.instruction import (
    encode_sft,
    read_instruction_records,
    read_json_records,
    sft_dataset,
)
from kzoo.data.preference import (
    check_encoded_pairs,
    encode_pairs,
    preference_dataset,
    read_preference_records,
)
from kzoo.tokenizers import ByteTokenizer


def write(tmp_path, records, name="pairs.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("name", ["pairs.json", "pairs.jsonl"])
def test_an_empty_preference_file_names_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("[]" if name.endswith(".json") else "\n")
    with pytest.raises(ValueError) as info:
        read_preference_records(path)
    assert str(info.value) == f"{path} holds no preference pairs (0 records)"


def test_a_file_whose_every_pair_is_skipped_says_how_many_and_why(tmp_path):
    path = write(tmp_path, [{"prompt": "a", "chosen": "x", "rejected": "x"},
                            {"prompt": "b", "chosen": "y", "rejected": "y"},
                            {"prompt": "c", "chosen": " ", "rejected": "z"}])
    with pytest.raises(ValueError) as info:
        read_preference_records(path)
    assert str(info.value) == (
        f"{path}: no usable preference pairs: all 3 records were skipped (2 with chosen == "
        "rejected, 1 with an empty response)")


def test_pairs_whose_prompts_all_leave_no_room_name_the_file_and_max_length(tmp_path):
    path = write(tmp_path, [{"prompt": "a long prompt", "chosen": "x", "rejected": "y"}] * 3)
    records, counts = read_preference_records(path)
    train = encode_pairs(records, ByteTokenizer(), max_length=8, template="raw")
    val = encode_pairs([], ByteTokenizer(), max_length=8, template="raw")
    assert train["skipped"] == 3
    with pytest.raises(ValueError) as info:
        check_encoded_pairs(train, val, path, max_length=8)
    message = str(info.value)
    assert message.startswith(f"{path}: no training pairs left")
    assert "3 skipped because the prompt leaves no room for a response in max_length=8" in message


def test_an_empty_validation_split_names_the_file(tmp_path):
    rows = encode_pairs([{"prompt": "p", "chosen": "x", "rejected": "y"}], ByteTokenizer(), 16,
                        template="raw")
    empty = encode_pairs([], ByteTokenizer(), 16, template="raw")
    with pytest.raises(ValueError, match=r"p.json: no validation pairs left: 0 of 1 .*"
                                         r"raise data.validation_fraction"):
        check_encoded_pairs(rows, empty, tmp_path / "p.json", max_length=16)
    check_encoded_pairs(rows, rows, tmp_path / "p.json", max_length=16)  # both non-empty: fine


def test_datasets_of_no_rows_are_a_clear_value_error():
    pairs = encode_pairs([], ByteTokenizer(), 16, template="raw")
    with pytest.raises(ValueError, match=r"no pairs to batch \(0 rows\)"):
        preference_dataset(pairs, batch_size=4)
    rows = encode_sft([], ByteTokenizer(), 16, template="plain")
    with pytest.raises(ValueError, match=r"no SFT rows to batch \(0 rows\)"):
        sft_dataset(rows, batch_size=4)


def test_an_empty_instruction_file_names_the_file(tmp_path):
    path = write(tmp_path, [], "sft.json")
    with pytest.raises(ValueError, match=rf"^{path} holds no instruction records \(0 records\)$"):
        read_instruction_records(path)


def test_a_data_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'[{"prompt": "caf\xe9"}]')
    with pytest.raises(ValueError, match=rf"^{path}: not UTF-8 text \(byte 16\)$"):
        read_json_records(path)
    ok = write(tmp_path, [1], "ok.json")
    assert read_json_records(ok) == [(f"{ok} record 0", 1)]
