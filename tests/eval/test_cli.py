"""`kzoo eval`: files and table on success, one `error:` line and exit code 2 on bad input."""

import json

import pytest

from kzoo.cli.main import main
from tests.helpers import one_error_line

TASK = """task: my_sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: ["yes", "no"]
doc_to_target: "{{{{a}}}}"
metric_list:
  - metric: acc
"""


# The metadata of the first test, given to the bad-input cases too: one task manager (an index
# of lm-eval's 14,000 task YAMLs, about 8 s of CPU each) serves both (kzoo.eval.task_manager).
METADATA = ["--metadata", '{"max_operand": 4}']


def test_run_folder_gets_results_and_table(tiny, capsys):
    assert main(["eval", str(tiny["run"]), "--tasks", "kzoo_arith_mc,kzoo_arith_gen,kzoo_sums_gen",
                 "--limit", "3", "--batch-size", "2", *METADATA]) == 0
    out = capsys.readouterr().out
    assert "kzoo_arith_mc" in out and "acc_centered" in out and "exact_match" in out
    results = json.loads((tiny["run"] / "eval" / "results.json").read_text())
    mc = results["results"]["kzoo_arith_mc"]
    assert mc["acc_centered,none"] == pytest.approx((mc["acc,none"] - 0.25) / 0.75)
    assert results["n-samples"]["kzoo_arith_gen"]["effective"] == 3
    assert results["n-samples"]["kzoo_sums_gen"]["original"] == 16  # --metadata reached it
    table = (tiny["run"] / "eval" / "results.md").read_text()
    assert table.startswith("|") and "kzoo_arith_gen" in table


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    """One include folder for the two tests below: `my_sums` (its data is there) and
    `my_gone` (its data file is not). Indexing lm-eval's 14,000 task YAMLs costs about 8 s of
    CPU per new folder (kzoo.eval.task_manager); one folder, unchanged, is indexed once."""
    root = tmp_path_factory.mktemp("include")
    rows = [{"q": f"Is {n} even?", "a": n % 2} for n in range(6)]
    (root / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "my_sums.yaml").write_text(TASK.format(data=root / "sums.jsonl"))
    (tasks / "my_gone.yaml").write_text(
        TASK.format(data=root / "gone.jsonl").replace("task: my_sums", "task: my_gone"))
    return tasks


def test_include_path_task_with_local_json(tiny, task_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", str(tiny["hf"]), "--tasks", "my_sums", "--include-path",
                 str(task_folder), "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n-samples"]["my_sums"]["effective"] == 6
    assert "my_sums" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--tasks", "kzoo_arith_mc", *METADATA]) == 2
    assert "does not recognize as a model" in one_error_line(capsys)
    assert main(["eval", str(tiny["hf"]), "--tasks", "kzoo_arth_mc", *METADATA]) == 2
    line = one_error_line(capsys)
    assert "unknown task 'kzoo_arth_mc'" in line and "kzoo_arith_mc" in line
    assert main(["eval", str(tiny["hf"]), "--tasks", "kzoo_arith_mc", "--limit", "0",
                 *METADATA]) == 2
    assert "--limit must be positive" in one_error_line(capsys)
    assert main(["eval", str(tiny["hf"]), "--tasks", "kzoo_arith_mc", "--metadata", "[1]"]) == 2
    assert "--metadata must be a JSON object" in one_error_line(capsys)
    assert main(["eval", str(tiny["hf"]), "--tasks", "kzoo_arith_mc", "--metadata", "{a"]) == 2
    assert "--metadata is not JSON" in one_error_line(capsys)


def test_missing_data_and_downloads_name_the_task(task_folder, tmp_path, monkeypatch):
    from kzoo.eval import task_manager
    from kzoo.eval.run import load_tasks

    manager = task_manager([task_folder])
    with pytest.raises(ValueError, match="task my_gone.*gone.jsonl"):
        load_tasks(["my_gone"], manager)
    with pytest.raises(ValueError, match="task wikitext needs to download.*--include-path"):
        load_tasks(["wikitext"], manager)
    monkeypatch.setattr("kzoo.eval.suite.DATA_DIR", tmp_path)
    with pytest.raises(ValueError, match="task kzoo_arith_mc: a data file is missing .*jsonl"):
        load_tasks(["kzoo_arith_mc"], manager)
