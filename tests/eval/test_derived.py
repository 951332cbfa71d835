"""The tasks made from the recipes' own data (`kzoo.eval.derived`): held out as the recipes hold
data out, found where the recipes find it, and a missing file is one line naming the task."""

import pytest

from kzoo.eval import derived


def test_shakespeare_items_continue_speeches_of_the_held_out_tail(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    items = derived.shakespeare_items(text)
    assert len(items) == derived.SHAKESPEARE_ITEMS
    start = int(len(text) * 0.9)  # the pre-training recipes' validation tail
    tail_lines = set(text[start:].split("\n"))
    for item in items:
        true = item["choices"][item["label"]]
        assert text.find(item["context"] + "\n" + true + "\n") >= start
        assert item["context"].split("\n")[0].endswith(":") and "\n" in item["context"]
        assert len(set(item["choices"])) == 4 and set(item["choices"]) <= tail_lines
    assert len({item["label"] for item in items}) == 4  # the right line moves around
    assert derived.shakespeare_items(text, count=20) == items[:20]  # stable prefix


def test_instruction_items_are_the_sft_recipes_held_out_records(instruction_data_path):
    from kzoo.data.instruction import get_template, read_instruction_records, split_records
    from kzoo.training.recipe import FineTuneData

    defaults = FineTuneData()
    assert (defaults.validation_fraction, defaults.split_seed, defaults.template) == (
        derived.INSTRUCT_FRACTION, derived.INSTRUCT_SEED, "alpaca")
    records = read_instruction_records(instruction_data_path)
    items = derived.instruction_items(records)
    train, held = split_records(records, 0.1, 0)
    assert len(items) == len(held) > 50
    assert [i["response"] for i in items] == [r["output"] for r in held]
    trained_prompts = {get_template("alpaca").format(r) for r in train}
    assert not trained_prompts & {i["prompt"] for i in items}
    assert all(i["prompt"].endswith("### Response:\n") for i in items)


def test_sums_are_written_as_the_feedback_loop_writes_them(caplog):
    from kzoo.alignment.feedback_loop import prompt_text
    from kzoo.eval import task_manager
    from kzoo.eval.run import load_tasks

    with caplog.at_level("WARNING"):
        [task] = load_tasks(["kzoo_sums_gen"], task_manager(metadata={"max_operand": 7}))
    assert len(task.dataset["test"]) == 49  # the metadata reaches the data
    assert not [r for r in caplog.records if "Custom kwargs" in r.getMessage()]

    problems = derived.sum_problems(12)
    assert len(problems) == 144 and len({p["question"] for p in problems}) == 144
    assert problems[13] == {"question": prompt_text(1, 1), "answer": "02"}
    assert problems[-1] == {"question": "11+11=", "answer": "22"}
    with pytest.raises(ValueError, match="max_operand must be in \\[2, 50\\]"):
        derived.sum_problems(51)


def test_data_files_are_found_by_metadata_then_kzoo_data_then_the_default(tmp_path,
                                                                          monkeypatch):
    given = tmp_path / "mine.txt"
    given.write_text("x")
    (tmp_path / "tinyshakespeare.txt").write_text("y")
    find = lambda metadata: derived.data_file(  # noqa: E731
        metadata, "shakespeare_path", "tinyshakespeare.txt", "kzoo_shakespeare_mc")
    monkeypatch.setenv("KZOO_DATA", str(tmp_path))
    assert find({"shakespeare_path": str(given)}) == given
    assert find({}) == tmp_path / "tinyshakespeare.txt"
    monkeypatch.delenv("KZOO_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="shared/data/tinyshakespeare.txt is not a file"):
        find({})


def test_a_missing_file_is_one_line_naming_the_task_and_how_to_point_at_it(tmp_path,
                                                                           monkeypatch):
    from kzoo.eval import task_manager
    from kzoo.eval.run import load_tasks

    monkeypatch.setenv("KZOO_DATA", str(tmp_path))
    for task, key in (("kzoo_shakespeare_mc", "shakespeare_path"),
                      ("kzoo_instruct_ll", "instructions_path")):
        with pytest.raises(ValueError) as error:
            load_tasks([task], task_manager())
        line = str(error.value)
        assert "\n" not in line and line.startswith(f"task {task}: a data file is missing")
        assert str(tmp_path) in line and key in line and "KZOO_DATA" in line
    empty = tmp_path / "empty.txt"
    empty.write_text("no speeches here\n")
    with pytest.raises(ValueError, match="kzoo_shakespeare_mc: .*empty.txt has no speeches"):
        load_tasks(["kzoo_shakespeare_mc"],
                   task_manager(metadata={"shakespeare_path": str(empty)}))


def test_a_task_manager_is_made_once_per_folders_and_metadata(tmp_path, monkeypatch):
    import lm_eval.tasks

    from kzoo.eval import _task_manager, task_manager

    made = []
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda **kw: made.append(kw) or object())
    _task_manager.cache_clear()
    try:
        assert task_manager() is task_manager()
        assert task_manager(metadata={"max_operand": 5}) is not task_manager()
        first = task_manager([tmp_path])
        assert task_manager([tmp_path]) is first
        (tmp_path / "new.yaml").write_text("task: new\n")  # a changed folder: indexed again
        assert task_manager([tmp_path]) is not first
        assert len(made) == 4 and made[1]["metadata"] == {"max_operand": 5}
        assert made[2]["include_path"][1] == str(tmp_path)
    finally:
        _task_manager.cache_clear()  # no fake left behind for the other tests
