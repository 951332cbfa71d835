import json

import numpy as np
import pytest

from kzoo.data.preference import (
    encode_pairs,
    preference_dataset,
    read_preference_records,
    split_arrays,
)
from kzoo.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


def _write(tmp_path, name, records):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records))
    return path


def test_trl_and_alpaca_forms_are_read(tmp_path):
    trl = _write(tmp_path, "a.jsonl", [{"prompt": "Q?", "chosen": "yes", "rejected": "no"}])
    alpaca = _write(tmp_path, "b.json", [
        {"instruction": "Add.", "input": "1+1", "chosen": "2", "rejected": "3"},
        {"instruction": "Greet.", "chosen": "Hi", "rejected": "Go away"},
    ])
    records, counts = read_preference_records(trl)
    assert records == [{"prompt": "Q?", "chosen": "yes", "rejected": "no"}]
    records, counts = read_preference_records(alpaca)
    assert records[1] == {"instruction": "Greet.", "input": "", "chosen": "Hi",
                          "rejected": "Go away"}
    assert counts == {"read": 2, "kept": 2, "identical": 0, "empty": 0}


def test_identical_and_empty_pairs_are_skipped_and_counted_or_strict_errors(tmp_path):
    path = _write(tmp_path, "p.json", [
        {"prompt": "a", "chosen": "x", "rejected": "y"},
        {"prompt": "b", "chosen": "same", "rejected": "same"},
        {"prompt": "c", "chosen": "  ", "rejected": "y"},
    ])
    records, counts = read_preference_records(path)
    assert [r["prompt"] for r in records] == ["a"]
    assert counts == {"read": 3, "kept": 1, "identical": 1, "empty": 1}
    with pytest.raises(ValueError, match=r"p.json record 1: .*chosen == rejected"):
        read_preference_records(path, strict=True)


@pytest.mark.parametrize("content, match", [
    ('[{"prompt": "a", "chosen": "x"}]', r"record 0: missing field\(s\) \['rejected'\]"),
    ('[{"prompt": "a", "chosen": 3, "rejected": "y"}]', r"record 0: field 'chosen' must be"),
    ('[["a", "b"]]', "record 0: expected a JSON object"),
    ('{"prompt": "a"}', "expected a JSON list"),
    ('[{"prompt": "a",\n "chosen": }]', r"line 2 column \d+: invalid JSON"),
])
def test_malformed_json_names_file_and_record(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        read_preference_records(path)
    assert "bad.json" in str(info.value)


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 3: invalid JSON"):
        read_preference_records(path)


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_preference_records(tmp_path / "none.json")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="expected a .json or .jsonl"):
        read_preference_records(tmp_path / "x.csv")


def test_encode_pairs_masks_only_response_tokens():
    pair = {"prompt": "2+2=", "chosen": "4", "rejected": "five"}
    out = encode_pairs([pair], TOK, max_length=12, template="raw")
    ids, mask = out["token_ids"][0], out["loss_mask"][0]
    eot = TOK.eot_id
    assert ids.shape == mask.shape == (2, 12)
    assert ids[0, :6].tolist() == [ord(c) for c in "2+2=4"] + [eot]
    assert mask[0].tolist() == [0] * 4 + [1, 1] + [0] * 6
    assert ids[1, :9].tolist() == [ord(c) for c in "2+2=five"] + [eot]
    assert mask[1].tolist() == [0] * 4 + [1] * 5 + [0] * 3
    assert out["lengths"].tolist() == [[6, 9]]
    assert (ids[0, 6:] == eot).all()  # right padding


def test_truncation_keeps_prompt_start_and_cuts_response_end():
    pair = {"prompt": "abcdef", "chosen": "0123456789", "rejected": "xy"}
    out = encode_pairs([pair], TOK, max_length=8, template="raw")
    assert bytes(out["token_ids"][0, 0].tolist()).decode() == "abcdef01"
    assert out["loss_mask"][0, 0].tolist() == [0] * 6 + [1, 1]
    # max_prompt_length keeps the prompt's first tokens
    out = encode_pairs([pair], TOK, max_length=8, template="raw", max_prompt_length=3)
    assert bytes(out["token_ids"][0, 0].tolist()).decode() == "abc01234"


def test_prompt_longer_than_max_length_is_skipped_or_strict_error():
    pairs = [{"prompt": "p" * 20, "chosen": "a", "rejected": "b"},
             {"prompt": "ok", "chosen": "a", "rejected": "b"}]
    out = encode_pairs(pairs, TOK, max_length=10, template="raw")
    assert out["skipped"] == 1 and out["token_ids"].shape == (1, 2, 10)
    with pytest.raises(ValueError, match=r"pair 0: the prompt has 20 tokens"):
        encode_pairs(pairs, TOK, max_length=10, template="raw", strict=True)


def test_templates_alpaca_and_custom():
    pair = {"instruction": "Add.", "input": "1+1", "chosen": "2", "rejected": "3"}
    out = encode_pairs([pair], TOK, max_length=300, template="alpaca")
    text = bytes(out["token_ids"][0, 0, : out["lengths"][0, 0] - 1].tolist()).decode()
    assert text.endswith("### Instruction:\nAdd.\n\n### Input:\n1+1\n\n### Response:\n2")
    out = encode_pairs([pair], TOK, max_length=40, template="Q: {prompt}\nA: ")
    text = bytes(out["token_ids"][0, 0, : out["lengths"][0, 0] - 1].tolist()).decode()
    assert text == "Q: Add.\n\n1+1\nA: 2"
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['answer'\]"):
        encode_pairs([pair], TOK, max_length=40, template="{answer}")
    with pytest.raises(ValueError, match="Valid names"):
        encode_pairs([pair], TOK, max_length=40, template="chatml")


def test_split_and_dataset_shapes():
    pairs = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(10)]
    arrays = encode_pairs(pairs, TOK, max_length=8, template="raw")
    train, val = split_arrays(arrays, 0.2, seed=1)
    assert len(train["token_ids"]) == 8 and len(val["token_ids"]) == 2
    all_rows = {tuple(r) for r in np.concatenate([train["token_ids"], val["token_ids"]])[:, 0]}
    assert len(all_rows) == 10
    batch = next(iter(preference_dataset(train, batch_size=4)))
    assert tuple(batch["token_ids"].shape) == (4, 2, 8)
    assert set(batch) == {"token_ids", "loss_mask", "lengths"}
    with pytest.raises(ValueError, match="validation_fraction"):
        split_arrays(arrays, 1.0)


def test_real_instruction_preference_file(preference_data_path):
    records, counts = read_preference_records(preference_data_path)
    assert counts["read"] == 1100
    assert counts["identical"] == 6 and counts["kept"] == 1094
    arrays = encode_pairs(records, TOK, max_length=512)
    assert arrays["skipped"] == 0
    assert arrays["token_ids"].shape == (1094, 2, 512)
    # every row has a response, and chosen differs from rejected somewhere in it
    assert (arrays["loss_mask"].sum(-1) >= 2).all()
    assert (arrays["token_ids"][:, 0] != arrays["token_ids"][:, 1]).any(-1).all()
    with pytest.raises(ValueError, match="chosen == rejected"):
        read_preference_records(preference_data_path, strict=True)
