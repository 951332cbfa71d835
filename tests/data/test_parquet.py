"""Parquet files (how Hugging Face data sets are stored) read like JSON: the same records, the
same encoded arrays, errors naming the file and row."""

import json

import numpy as np
import pytest

from kzoo.data.instruction import encode_sft, read_instruction_records
from kzoo.data.preference import encode_pairs, read_preference_records
from kzoo.data.records import read_records
from kzoo.tokenizers import ByteTokenizer

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TOK = ByteTokenizer()


def msg(role, content):
    return {"role": role, "content": content}


def _write_both(tmp_path, name, records):
    """The same records as `name.json` and `name.parquet`."""
    (tmp_path / f"{name}.json").write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / f"{name}.parquet")
    return tmp_path / f"{name}.json", tmp_path / f"{name}.parquet"


def _same_arrays(a, b):
    assert a.keys() == b.keys()
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key], err_msg=key)


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_alpaca_records_round_trip(tmp_path, template):
    # "input" is missing from the second record: Parquet stores it as null, read as missing
    records = [{"instruction": "Add.", "input": "1+1", "output": "2"},
               {"instruction": "Greet.", "output": "Hi ✓"}]
    json_path, parquet_path = _write_both(tmp_path, "sft", records)
    from_json, from_parquet = (read_instruction_records(p) for p in (json_path, parquet_path))
    assert from_parquet == from_json
    assert from_parquet[1] == {"instruction": "Greet.", "input": "", "output": "Hi ✓"}
    _same_arrays(encode_sft(from_json, TOK, 256, template),
                 encode_sft(from_parquet, TOK, 256, template))


def test_conversations_round_trip(tmp_path):
    records = [{"messages": [msg("system", "Be brief."), msg("user", "2+2?"),
                             msg("assistant", "4"), msg("user", "3+3?"), msg("assistant", "6")]},
               {"messages": [msg("user", "café?"), msg("assistant", "oui")]}]
    json_path, parquet_path = _write_both(tmp_path, "chat", records)
    kind = pq.read_schema(parquet_path).field("messages").type  # a list of structs, as HF's
    assert pa.types.is_list(kind) and {f.name for f in kind.value_type} == {"role", "content"}
    from_json, from_parquet = (read_instruction_records(p) for p in (json_path, parquet_path))
    assert from_parquet == from_json == records
    out = encode_sft(from_parquet, TOK, 128)
    assert out["loss_mask"].sum() > 0
    _same_arrays(encode_sft(from_json, TOK, 128), out)


def test_preference_pairs_round_trip(tmp_path):
    prompt = [msg("user", "Greet me.")]
    conversational = [{"prompt": prompt, "chosen": [msg("assistant", "Hello!")],
                       "rejected": [msg("assistant", "Go away.")]},
                      {"prompt": prompt, "chosen": [msg("assistant", "Same")],
                       "rejected": [msg("assistant", "Same")]}]
    strings = [{"prompt": "2+2=", "chosen": "4", "rejected": "5"},
               {"prompt": "3+3=", "chosen": "6", "rejected": "7"}]
    for name, records, template in [("conv", conversational, "alpaca"),
                                    ("str", strings, "raw")]:
        json_path, parquet_path = _write_both(tmp_path, name, records)
        (a, counts_a), (b, counts_b) = (read_preference_records(p)
                                        for p in (json_path, parquet_path))
        assert a == b and counts_a == counts_b
        _same_arrays(encode_pairs(a, TOK, 64, template), encode_pairs(b, TOK, 64, template))
    assert counts_a == {"read": 2, "kept": 2, "identical": 0, "empty": 0}


def test_shared_preference_file_as_parquet(tmp_path, preference_data_path):
    records = json.loads(preference_data_path.read_text())
    path = tmp_path / "instruction-preference.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    (a, counts_a), (b, counts_b) = (read_preference_records(p)
                                    for p in (preference_data_path, path))
    assert counts_b == counts_a and counts_b["kept"] == 1094 and a == b
    _same_arrays(encode_pairs(a[:100], TOK, 512), encode_pairs(b[:100], TOK, 512))


def test_rows_are_located_and_nulls_dropped(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"prompt": ["a", None], "completion": ["b", "c"]}), path)
    assert read_records(path) == [(f"{path} row 0", {"prompt": "a", "completion": "b"}),
                                  (f"{path} row 1", {"completion": "c"})]


@pytest.mark.parametrize("columns, match", [
    ({"question": ["q"], "answer": ["a"]},
     r"t.parquet row 0: missing field\(s\) \['instruction', 'output'\]; has \['answer', "
     r"'question'\]"),
    ({"instruction": ["q", "r"], "output": [1, 2]}, r"t.parquet row 0: field 'output' must be "
                                                    r"a string, got int"),
    ({"messages": [[{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
                   [{"role": "user", "content": "u"}]]},
     r"t.parquet row 1: the conversation has no assistant turn"),
    ({"messages": [[{"role": "user", "text": "u"}]]},
     r"t.parquet row 0: messages\[0\] has no \['content'\]"),
])
def test_wrong_schema_names_file_and_row(tmp_path, columns, match):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(columns), path)
    with pytest.raises(ValueError, match=match) as info:
        read_instruction_records(path)
    assert "\n" not in str(info.value)


def test_damaged_parquet_gives_one_line_naming_it(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt": ["a"] * 50, "completion": ["b"] * 50}), good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    for path in (cut, junk):
        with pytest.raises(ValueError, match=f"{path.name}: not a readable Parquet file") as info:
            read_instruction_records(path)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="none.parquet does not exist"):
        read_preference_records(tmp_path / "none.parquet")
    with pytest.raises(ValueError, match=r"holds no instruction records \(0 records\)"):
        empty = tmp_path / "empty.parquet"
        pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), empty)
        read_instruction_records(empty)
