"""kzoo's offline lm-eval task suite: its data, made here, and its metric helpers.

Three tasks ship in `kzoo/eval/tasks/` (YAML) with their data in `kzoo/eval/tasks/data/`
(JSONL written by `python -m kzoo.eval.suite`; nothing is downloaded):

- `kzoo_pydocs_ppl`: perplexity (`loglikelihood_rolling`) of passages of CPython's own
  documentation (`pydoc_data.topics`) from the topics that come last in name order, inside
  the 10% tail that the `*_pydocs_pretrain` recipes keep for validation (held out);
- `kzoo_arith_mc`: multiple choice, the right sum of two numbers among four, scored by
  log-likelihood; reports `acc`, `acc_norm` and `acc_centered` (CORE-style: chance is 0);
- `kzoo_arith_gen`: the same sums answered by greedy generation, scored by exact match.

Example:
```python
from kzoo.eval import suite
suite.arithmetic_problems(2, seed=0)[0]["question"]   # 'Question: 49 + 19 =\\nAnswer:'
suite.TASKS_DIR                                          # the shipped YAMLs (an include path)
```
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"
DATA_DIR = TASKS_DIR / "data"
SUITE = ("kzoo_pydocs_ppl", "kzoo_arith_mc", "kzoo_arith_gen", "kzoo_shakespeare_mc",
         "kzoo_instruct_ll", "kzoo_sums_gen")
# The pretraining recipes hold the last 10% of the pydocs token stream out; the passages come
# from the last 8% of its characters, inside that tail whatever the tokenizer.
PYDOCS_TAIL = 0.08
ARITH_SEED, ARITH_COUNT, ARITH_SHOTS = 25, 240, 40


def arithmetic_problems(count: int, seed: int = ARITH_SEED) -> list[dict]:
    """`count` sums `a + b` (0 <= a, b < 50) with four answer choices, made by `seed` alone.

    Each problem: `question` (the prompt), `answer` (the sum as text), `choices` (four
    distinct numbers, one of them right) and `label` (the right choice's index).

    Example:
    ```python
    problem = arithmetic_problems(1, seed=3)[0]
    problem["choices"][problem["label"]] == problem["answer"]   # True
    ```
    """
    rng = random.Random(seed)
    problems = []
    for _ in range(count):
        a, b = rng.randrange(50), rng.randrange(50)
        total = a + b
        wrong: set[int] = set()
        while len(wrong) < 3:
            guess = total + rng.choice([-1, 1]) * rng.randint(1, 10)
            if guess >= 0 and guess != total:
                wrong.add(guess)
        choices = [total, *sorted(wrong)]
        rng.shuffle(choices)
        problems.append({"question": f"Question: {a} + {b} =\nAnswer:", "answer": str(total),
                         "choices": [str(c) for c in choices], "label": choices.index(total)})
    return problems


def pydocs_passages(max_chars: int = 1200) -> list[dict]:
    """Passages of the held-out pydocs topics: paragraphs joined up to `max_chars` each.

    Example:
    ```python
    pydocs_passages()[0]["text"][:40]
    ```
    """
    from pydoc_data.topics import topics

    names = sorted(name for name in topics if topics[name].strip())
    total = sum(len(topics[n].strip()) for n in names)
    held, size = [], 0
    for name in reversed(names):
        size += len(topics[name].strip())
        if size > PYDOCS_TAIL * total:
            break
        held.append(name)
    passages = []
    for name in reversed(held):
        current = ""
        for paragraph in topics[name].strip().split("\n\n"):
            if current and len(current) + len(paragraph) + 2 > max_chars:
                passages.append({"topic": name, "text": current})
                current = ""
            current = f"{current}\n\n{paragraph}" if current else paragraph
        if current.strip():
            passages.append({"topic": name, "text": current})
    return passages


def suite_data() -> dict[str, list[dict]]:
    """The shipped data files' rows, by file name (what `python -m kzoo.eval.suite` writes)."""
    problems = arithmetic_problems(ARITH_COUNT)
    return {"arith_fewshot.jsonl": problems[:ARITH_SHOTS],
            "arith_test.jsonl": problems[ARITH_SHOTS:],
            "pydocs_heldout.jsonl": pydocs_passages()}


def write_suite_data(folder: str | Path = DATA_DIR) -> list[Path]:
    """Write the suite's JSONL files into `folder`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in suite_data().items():
        path = folder / name
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                        encoding="utf-8")
        written.append(path)
    return written


def read_rows(path: str | Path, task: str) -> list[dict]:
    """The rows of a JSONL data file; a missing or damaged file is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (written by python -m kzoo.eval.suite)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as error:
                raise ValueError(f"task {task}: {path} line {number} is not JSON: "
                                 f"{error}") from None
    return rows


def load_split_files(task: str, **files) -> dict:
    """A `datasets.DatasetDict` of the JSONL files named by split (`test="arith_test.jsonl"`),
    read from the shipped data folder (lm-eval's `custom_dataset` of the suite's YAMLs).

    Example:
    ```python
    load_split_files("kzoo_arith_mc", test="arith_test.jsonl")["test"][0]["answer"]
    ```
    """
    import datasets

    return datasets.DatasetDict({
        split: datasets.Dataset.from_list(read_rows(DATA_DIR / name, task))
        for split, name in files.items()})


def centered(accuracy: float, choices: int) -> float:
    """CORE-style centred accuracy: 0 at chance (1 / `choices`), 1 when always right.

    Example: `centered(0.625, 4)` is 0.5.
    """
    chance = 1.0 / choices
    return (accuracy - chance) / (1.0 - chance)


def process_multiple_choice(doc: dict, results) -> dict:
    """lm-eval's `process_results` of a choice task: `acc` (the likeliest choice is right),
    `acc_norm` (likelihood per character) and `acc_centered` (`centered(acc)`, per doc)."""
    scores = [float(r[0]) if isinstance(r, tuple | list) else float(r) for r in results]
    gold = int(doc["label"])
    lengths = [max(1, len(str(c))) for c in doc["choices"]]
    best = max(range(len(scores)), key=scores.__getitem__)
    best_norm = max(range(len(scores)), key=lambda i: scores[i] / lengths[i])
    acc = float(best == gold)
    return {"acc": acc, "acc_norm": float(best_norm == gold),
            "acc_centered": centered(acc, len(scores))}


if __name__ == "__main__":
    for written in write_suite_data(sys.argv[1] if len(sys.argv) > 1 else DATA_DIR):
        print(written)
