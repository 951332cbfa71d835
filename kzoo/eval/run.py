"""Run lm-eval tasks on a kzoo model offline, and write what came out (`kzoo eval`).

Tasks are kzoo's shipped suite, lm-eval's own tasks whose data is already local, and task
folders given as include paths (YAMLs with `dataset_path: json` and `data_files` naming
local JSON/JSONL files). Every task is loaded before the model runs, so a wrong name, a
missing data file or a data set that would need a download is one line naming the task.

Example:
```python
from kzoo.eval.run import evaluate, write_report
out = evaluate("runs/gpt_nano_pydocs", ["kzoo_arith_mc"], limit=20)
write_report(out, "runs/gpt_nano_pydocs/eval")   # results.json, results.md
```
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from pathlib import Path

from kzoo.eval.suite import SUITE

logger = logging.getLogger("kzoo.eval")
OFFLINE_HINT = ("copy its YAML into a folder, set dataset_path: json and dataset_kwargs: "
                "data_files: to local JSON/JSONL files, and pass that folder with "
                "--include-path")


def parse_tasks(text: str) -> list[str]:
    """`"a,b"` -> `["a", "b"]`; a ValueError when nothing is named."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise ValueError(f"--tasks names no task; kzoo's own: {', '.join(SUITE)}")
    return names


def check_include_paths(paths) -> list[Path]:
    """The include folders, each checked to exist."""
    folders = [Path(p) for p in paths]
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f"--include-path {folder} is not a folder")
    return folders


def load_tasks(names: list[str], manager) -> list:
    """lm-eval task (and group) objects for `names`, each loaded with its data.

    Raises:
        ValueError: one line: an unknown name (with the close names), a task whose data file
            is missing, a task that would download its data, or another failure of a task.
    """
    known = sorted({*manager.all_tasks, *manager.all_groups, *manager.all_tags})
    objects = []
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = (f"close names: {', '.join(close)}" if close else
                    f"kzoo's own: {', '.join(SUITE)}")
            raise ValueError(f"unknown task {name!r}; {hint} (python -m lm_eval ls tasks lists "
                             "lm-eval's)")
        try:
            loaded = manager.load([name])
        except FileNotFoundError as error:
            raise ValueError(_missing_file(name, error)) from None
        except ConnectionError as error:
            raise ValueError(f"task {name} needs to download its data "
                             f"({_first_line(error)}) and kzoo eval runs offline; "
                             f"{OFFLINE_HINT}") from None
        except Exception as error:  # lm-eval and `datasets` raise many kinds
            raise ValueError(f"task {name} could not be loaded: {type(error).__name__}: "
                             f"{_first_line(error)}") from None
        if name in loaded["groups"]:
            objects.append(loaded["groups"][name])
        else:
            objects.extend(loaded["tasks"].values())
    return objects


def _first_line(error) -> str:
    text = " ".join(str(error).split())
    return text[:300]


def _missing_file(name: str, error: FileNotFoundError) -> str:
    return f"task {name}: a data file is missing ({_first_line(error)})"


def prepare(model, tasks, batch_size=8, include_paths=(), tokenizer="auto", dtype=None,
            model_file="model.keras", seed=0, metadata=None) -> dict:
    """Load the tasks (with their data), then the model: everything that can be wrong with
    the input fails here, as one-line ValueErrors, before anything runs.

    Returns:
        dict. "lm" (the `KzooLM`), "tasks" (lm-eval task objects), "manager".
    """
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    from kzoo.eval import KzooLM, task_manager

    manager = task_manager(check_include_paths(include_paths), metadata)
    objects = load_tasks(list(tasks), manager)
    lm = model if isinstance(model, KzooLM) else KzooLM(
        pretrained=str(model), tokenizer=tokenizer, batch_size=batch_size, dtype=dtype,
        model_file=model_file, seed=seed)
    return {"lm": lm, "tasks": objects, "manager": manager}


def run(prepared: dict, limit=None, num_fewshot=None, log_samples=False, seed=0) -> dict:
    """lm-eval's `simple_evaluate` of what `prepare` made; returns lm-eval's output."""
    import lm_eval

    return lm_eval.simple_evaluate(
        model=prepared["lm"], tasks=prepared["tasks"], limit=limit, num_fewshot=num_fewshot,
        task_manager=prepared["manager"], log_samples=log_samples, random_seed=seed,
        numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)


def evaluate(model, tasks, limit=None, batch_size=8, include_paths=(), tokenizer="auto",
             dtype=None, model_file="model.keras", num_fewshot=None, log_samples=False,
             seed=0, metadata=None) -> dict:
    """lm-eval's `simple_evaluate` of a kzoo model on `tasks`, offline.

    Args:
        model: str, Path or `KzooLM`. a model path (`model.init_from` forms) or a made model.
        tasks: list[str]. task, group or tag names.
        limit: int, float or None. the first N docs of each task (a float < 1: a fraction).
        batch_size: int. rows per forward and generation batch.
        include_paths: list. more task folders.
        tokenizer: str. "auto", "byte" or a tokenizer folder.
        dtype: str or None. dtype of a converted Hugging Face / keras-hub model.
        model_file: str. the model file inside a run folder.
        num_fewshot: int or None. override the tasks' few-shot count.
        log_samples: bool. keep every request and answer in the output ("samples").
        seed: int. lm-eval's seeds (few-shot choice) and sampled generations.
        metadata: dict or None. handed to every task (the data paths of the tasks that
            `kzoo.eval.derived` makes, `max_operand`, ...).

    Returns:
        dict. lm-eval's output: "results", "configs", "versions", "n-shot", ...
    """
    prepared = prepare(model, tasks, batch_size, include_paths, tokenizer, dtype, model_file,
                       seed, metadata)
    return run(prepared, limit, num_fewshot, log_samples, seed)


def markdown_table(output: dict) -> str:
    """lm-eval's results table (Markdown), plus the groups' table when there are groups."""
    from lm_eval.utils import make_table

    table = make_table(output)
    if output.get("groups"):
        table += "\n" + make_table(output, "groups")
    return table


def write_report(output: dict, folder: str | Path) -> list[Path]:
    """Write `results.json` (lm-eval's output, samples left out) and `results.md` (the
    table) into `folder`; returns their paths."""
    from lm_eval.utils import handle_non_serializable

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kept = {k: v for k, v in output.items() if k != "samples"}
    results = folder / "results.json"
    results.write_text(json.dumps(kept, indent=2, default=handle_non_serializable,
                                  ensure_ascii=False), encoding="utf-8")
    table = folder / "results.md"
    table.write_text(markdown_table(output), encoding="utf-8")
    return [results, table]
