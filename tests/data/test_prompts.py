"""Prompt files for on-policy RL: prompts, columns, locations, one-line errors, the split."""

import json

import pytest

from kzoo.data.prompts import PromptSet, read_prompts, split_prompts


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _user(text):
    return [{"role": "user", "content": text}]


def test_string_and_message_prompts_with_columns(tmp_path):
    records = [{"prompt": "07+13=", "answer": 20, "level": "easy"},
               {"prompt": _user("2+2?"), "answer": "4", "level": "easy"},
               {"prompt": "01+02=", "answer": 3, "level": "hard"}]
    ps = read_prompts(_jsonl(tmp_path / "p.jsonl", records))
    assert len(ps) == 3
    assert ps.prompts == ["07+13=", _user("2+2?"), "01+02="]
    assert ps.columns == {"answer": [20, "4", 3], "level": ["easy", "easy", "hard"]}
    # JSONL lines are 1-based, as the record reader names them
    assert ps.locations == [f"{tmp_path / 'p.jsonl'} line {i}" for i in (1, 2, 3)]


def test_messages_keep_only_role_and_content(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": [{"role": "user", "content": "Hi", "name": "x"}]}]))
    assert read_prompts(path).prompts == [_user("Hi")]


def test_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    # a null is a missing field: the second row lacks the column the first has
    with pytest.raises(ValueError) as info:
        read_prompts(tmp_path / "p.parquet")
    assert str(info.value) == (f"{tmp_path / 'p.parquet'} row 1: has no column 'answer' that "
                               f"{tmp_path / 'p.parquet'} row 0 has; every record needs the same "
                               "columns ['answer']")
    pq.write_table(pa.Table.from_pylist(rows[:1]), tmp_path / "q.parquet")
    assert read_prompts(tmp_path / "q.parquet").locations == [f"{tmp_path / 'q.parquet'} row 0"]


@pytest.mark.parametrize("records, line, match", [
    ([{"prompt": "a"}, {"text": "b"}], 2,
     "no 'prompt' field (nor an Alpaca 'instruction'); has ['text']"),
    ([{"prompt": "  "}], 1, "'prompt' is empty"),
    ([{"prompt": 3}], 1, "'prompt' must be a non-empty string or a list of messages"),
    ([{"prompt": []}], 1, "'prompt' is an empty list of messages"),
    ([{"prompt": [{"role": "robot", "content": "x"}]}], 1, "unknown role 'robot'"),
    ([{"prompt": [{"role": "user"}]}], 1, "prompt[0] has no ['content']"),
    ([[1, 2]], 1, "expected a JSON object with a 'prompt', got list"),
    ([{"prompt": "a", "finished": True}], 1, "column 'finished' is a name reward functions"),
    # the first record missing a key is named, even when the key first appears later
    ([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c", "answer": 1}], 1,
     "has no column 'answer' that"),
    ([{"prompt": "a", "answer": 1}, {"prompt": "b", "answer": 2}, {"prompt": "c"}], 3,
     "has no column 'answer' that"),
])
def test_bad_records_name_file_and_line(tmp_path, records, line, match):
    path = _jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(ValueError) as info:
        read_prompts(path)
    message = str(info.value)
    assert message.startswith(f"{path} line {line}: "), message
    assert match in message and "\n" not in message


def test_missing_column_names_the_record_that_has_it(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b", "answer": 1}])
    with pytest.raises(ValueError, match=r"line 1: has no column 'answer' that .*line 2 has"):
        read_prompts(path)


def test_empty_file(tmp_path):
    for name, text in [("e.jsonl", "\n\n"), ("e.json", "[]")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError) as info:
            read_prompts(tmp_path / name)
        assert str(info.value) == f"{tmp_path / name} holds no prompts (0 records)"


def test_select_keeps_columns_and_locations_aligned():
    ps = PromptSet(["a", "b", "c"], {"answer": [1, 2, 3]}, ["l1", "l2", "l3"])
    picked = ps.select([2, 0, 2])
    assert picked.prompts == ["c", "a", "c"]
    assert picked.columns == {"answer": [3, 1, 3]} and picked.locations == ["l3", "l1", "l3"]
    with pytest.raises(ValueError, match="index 3 is out of range for 3 prompts"):
        ps.select([3])
    with pytest.raises(ValueError, match=r"3 prompts but \{\"columns\['answer'\]\": 2\}"):
        PromptSet(["a", "b", "c"], {"answer": [1, 2]}, ["l1", "l2", "l3"])


def _numbered(n, repeats=1):
    prompts = [f"{i:02d}+01=" for i in range(n) for _ in range(repeats)]
    return PromptSet(prompts, {"answer": list(range(len(prompts)))},
                     [f"f line {i + 1}" for i in range(len(prompts))])


def test_split_is_deterministic_disjoint_and_sized():
    ps = _numbered(40)
    train, held = split_prompts(ps, 0.25, seed=3)
    again_train, again_held = split_prompts(ps, 0.25, seed=3)
    assert train == again_train and held == again_held
    assert len(held) == 10 and len(train) == 30
    assert not set(train.prompts) & set(held.prompts)
    assert sorted(train.prompts + held.prompts) == sorted(ps.prompts)
    # columns and locations travel with their prompt
    for part in (train, held):
        for prompt, answer, where in zip(part.prompts, part.columns["answer"], part.locations):
            i = ps.prompts.index(prompt)
            assert (answer, where) == (ps.columns["answer"][i], ps.locations[i])
    assert split_prompts(ps, 0.25, seed=4)[1].prompts != held.prompts


def test_split_ignores_order_and_keeps_repeats_together():
    ps = _numbered(20, repeats=3)
    reversed_ps = ps.select(range(len(ps) - 1, -1, -1))
    held = split_prompts(ps, 0.2, seed=0)[1]
    assert sorted(split_prompts(reversed_ps, 0.2, seed=0)[1].prompts) == sorted(held.prompts)
    assert len(held) == 12 and all(held.prompts.count(p) == 3 for p in held.prompts)


def test_split_messages_prompts():
    ps = PromptSet([_user(str(i)) for i in range(10)], {}, [str(i) for i in range(10)])
    train, held = split_prompts(ps, 0.3, seed=0)
    assert len(held) == 3 and len(train) == 7


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, True, "0.1"])
def test_split_bad_fraction(fraction):
    with pytest.raises(ValueError, match="held_out_fraction must be in"):
        split_prompts(_numbered(10), fraction, seed=0)


def test_split_needs_two_distinct_prompts():
    with pytest.raises(ValueError, match="cannot split 1 distinct prompt"):
        split_prompts(_numbered(1, repeats=4), 0.5, seed=0)


def test_alpaca_records_become_prompts_rendered_as_sft_renders_them(tmp_path):
    import json

    from kzoo.alignment.rollout import encode_prompts
    from kzoo.data.instruction import get_template
    from kzoo.data.prompts import read_prompts
    from kzoo.tokenizers import ByteTokenizer

    path = tmp_path / "alpaca.json"
    records = [{"instruction": "Add.", "input": "2 and 3", "output": "5"},
               {"instruction": "Say hi.", "output": "hi"}]
    path.write_text(json.dumps(records))
    ps = read_prompts(path)
    assert ps.prompts == ["Add.\n\n2 and 3", "Say hi."]
    assert ps.columns["output"] == ["5", "hi"]
    tok = ByteTokenizer()
    ids = encode_prompts(ps.prompts, tok, 512, template="alpaca", columns=ps.columns)
    for got, record in zip(ids, records):
        assert tok.decode(got) == get_template("alpaca").format(record)
